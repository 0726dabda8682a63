"""Calibrate edgeclean.ranks' byte model against real ONNX files.

Exports dense and factorised zoo models with the export stage itself (``edgeclean.export``: BN
folded, onnxsim, opset 17, ir_version 13, short names) and its int8 path (``quantize_int8``: static
QDQ S8S8, per-channel weights, float biases, compacted), and prints the real file size next to
``ranks.estimate_bytes``. ``--fit`` prints least-squares constants for ``ranks.COST``.

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/onnx_bytes.py [--fit]
    /work/venv/bin/python benchmarks/onnx_bytes.py --breakdown model.onnx model.fp32.onnx  # where int8 bytes go
    /work/venv/bin/python benchmarks/onnx_bytes.py --estimate model.pt [model.onnx]  # the estimate of a checkpoint
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/onnx_bytes.py --ratios benchmarks/results/int8_ratio.json
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.export import ExportConfig, quantize_int8  # noqa: E402
from edgeclean.export import export as export_onnx  # noqa: E402
from edgeclean.factorize import factorizable, factorize_conv, full_ranks, swap_modules  # noqa: E402
from edgeclean.ranks import COST, estimate_bytes, model_counts  # noqa: E402
from edgeclean.load import ModelSpec  # noqa: E402
from edgeclean.zoo import create_model  # noqa: E402


def per_element(counts: dict, prec: str) -> float:
    """The bytes of the items whose cost is fixed (4 or 1 bytes an element), not fitted."""
    return sum(COST[prec][k] * counts.get(k, 0) for k in ("weight", "head_weight", "float_param"))


def export(model: nn.Module, shape, path: str) -> None:
    """The fp32 artifact exactly as the export stage writes it (BN folded, onnxsim, short names)."""
    spec = ModelSpec(arch="zoo", input_shape=tuple(shape))
    export_onnx(model.eval(), spec, path, config=ExportConfig(write_ort=False, parity_samples=4))


def quantize(src: str, dst: str, shape) -> None:
    """The int8 artifact as the export stage writes it (QDQ S8S8 per channel, compacted); the file
    size does not depend on the calibration values, so a few noise images calibrate it."""
    quantize_int8(Path(src), Path(dst), np.random.default_rng(0).random((4, *shape), dtype=np.float32))


def int8_breakdown(int8_path: str, fp32_path: str | None = None) -> dict:
    """Where an int8 ONNX file's bytes go: weights, their per-channel scales, biases, activation
    quantisation parameters, nodes, names. With ``fp32_path``, each part as a fraction of the fp32
    file too, and ``floor``: (int8 weights + weight scales + biases) / fp32 bytes, the ratio no
    per-channel QDQ graph can beat whatever its node overhead."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(int8_path)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    consumer: dict[str, str] = {}
    for node in g.node:
        for x in node.input:
            consumer.setdefault(x, node.op_type)
    parts = {"weights_int8": 0, "weight_scales": 0, "weight_zero_points": 0, "weights_fp32": 0, "biases": 0,
             "activation_qparams": 0, "other_initializers": 0}
    for t in g.initializer:
        a, size = numpy_helper.to_array(t), t.ByteSize()
        users = [n for n in g.node if t.name in n.input]
        role = None
        for n in users:
            k = list(n.input).index(t.name)
            of_weight = n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) > 1
            if of_weight and k == 0:
                role = "weights_int8"
            elif of_weight and k == 1:  # per channel, or one scalar for a per-tensor weight
                role = "weight_scales"
            elif of_weight and k == 2:
                role = "weight_zero_points"
            elif n.op_type in ("Conv", "Gemm") and k == 2 or a.ndim == 1 and n.op_type == "DequantizeLinear" and k == 0:
                role = "biases"
            elif n.op_type in ("Conv", "Gemm", "MatMul") and k == 1:  # a layer left float
                role = "weights_fp32"
            elif n.op_type in ("QuantizeLinear", "DequantizeLinear") and a.ndim == 0:
                role = "activation_qparams"
        parts[role or "other_initializers"] += size
    for node in g.node:
        key = "nodes_" + ("qdq" if node.op_type in ("QuantizeLinear", "DequantizeLinear") else "compute")
        parts[key] = parts.get(key, 0) + node.ByteSize()
    total = proto.ByteSize()
    parts["rest"] = total - sum(parts.values())
    # the same parts split into payload (the numbers) and the rest (names, dims, types, node fields)
    payload = {"weights_int8": 0, "weight_scales": 0, "biases": 0, "activation_qparams": 0}
    names = {"initializer_names": sum(len(t.name) for t in g.initializer),
             "node_names_qdq": sum(len(n.name) for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")),
             "node_names_compute": sum(len(n.name) for n in g.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear"))}
    counts = {"qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node),
              "compute_nodes": sum(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in g.node),
              "weight_scale_values": 0, "activation_qparam_initializers": 0}
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        users = [(n, list(n.input).index(t.name)) for n in g.node if t.name in n.input]
        n, k = users[0]
        of_weight = n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) > 1
        if of_weight and k == 0:
            payload["weights_int8"] += a.nbytes
        elif of_weight and k == 1:
            payload["weight_scales"] += a.nbytes
            counts["weight_scale_values"] += a.size
        elif n.op_type in ("Conv", "Gemm") and k == 2:
            payload["biases"] += a.nbytes
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear") and not of_weight and a.ndim == 0:
            payload["activation_qparams"] += a.nbytes
            counts["activation_qparam_initializers"] += 1
    out = {"int8_bytes": total, "parts": parts, "payload": payload, "names": names, "counts": counts}
    if fp32_path:
        fp32 = os.path.getsize(fp32_path)
        out["fp32_bytes"] = fp32
        out["parts_over_fp32"] = {k: round(v / fp32, 4) for k, v in parts.items()}
        out["ratio"] = total / fp32
        out["floor"] = (parts["weights_int8"] + parts["weight_scales"] + parts["biases"]) / fp32
        # what the file would weigh with no quantisation parameters and no Q/DQ nodes at all: int8
        # weights, float biases, the compute nodes (the same as in the fp32 file) and the graph shell
        out["floor_without_qdq"] = (parts["weights_int8"] + parts["weights_fp32"] + parts["biases"]
                                    + parts["nodes_compute"] + parts["rest"]) / fp32
    return out


def quantize_previous_format(src: str, dst: str, shape) -> None:
    """The int8 format before the compaction (for before/after figures): the same quantisation with
    int32 biases, every zero point, the quantiser's names and metadata (edge names already short)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeclean.export import _short_edge_names

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": np.random.default_rng(0).random((4, *shape), dtype=np.float32)}])

        def get_next(self):
            return next(self.items, None)

    pre = dst + ".pre.onnx"
    quant_pre_process(src, pre, skip_symbolic_shape=False)
    op_types = sorted({n.op_type for n in onnx.load(pre).graph.node} - {"BatchNormalization"})
    quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=op_types)
    os.unlink(pre)
    proto = onnx.load(dst)
    proto.ir_version = min(proto.ir_version, 13)
    _short_edge_names(proto)
    onnx.save(proto, dst)


def ratio_cases():
    """The three models of the int8 size target: the demo suspect, the demo after C&C to 400 kB
    (no fine-tuning), and bench_export.py's full-width ResNet-18 factorised to 1/8."""
    from edgeclean.cc import CCConfig, clean_and_compact
    from edgeclean.load import load_suspect

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_export

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    demo, spec = load_suspect(os.path.join(root, "models", "demo_badnets_resnet18.pt"))
    yield "demo suspect (dense)", demo, spec
    cleaned, _ = clean_and_compact(demo, spec, budget_bytes=400_000, config=CCConfig(do_finetune=False))
    yield "demo after C&C to 400 kB (no fine-tuning)", cleaned, spec
    r18, r18_spec = bench_export.random_resnet18()
    fact, _ = bench_export.factorise_to(r18, 1 / 8)
    yield "full-width ResNet-18 factorised to 1/8 (bench_export)", fact, r18_spec


def ratios(out_json: str | None) -> None:
    import json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, spec in ratio_cases():
            f32, old, new = (os.path.join(tmp, n) for n in ("m.onnx", "old.onnx", "new.onnx"))
            export_onnx(model.eval(), spec, f32, config=ExportConfig(write_ort=False, parity_samples=4))
            quantize_previous_format(f32, old, spec.input_shape)
            quantize(f32, new, spec.input_shape)
            b = int8_breakdown(new, f32)
            row = {"model": label, "fp32_bytes": b["fp32_bytes"], "int8_bytes_previous_format": os.path.getsize(old),
                   "ratio_previous_format": os.path.getsize(old) / b["fp32_bytes"], "int8_bytes": b["int8_bytes"],
                   "ratio": b["ratio"], "floor": b["floor"], "parts": b["parts"]}
            rows.append(row)
            print(f"{label:55s} fp32 {row['fp32_bytes']:>10,d}  before {row['ratio_previous_format']:.4f}  "
                  f"after {row['ratio']:.4f}  floor (weights+scales+biases) {row['floor']:.4f}", flush=True)
    if out_json:
        with open(out_json, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")


def factorised(model: nn.Module, frac: float) -> nn.Module:
    def rep(m, n):
        r_in, r_out = full_ranks(m)
        r_in, r_out = max(1, int(r_in * frac)), max(1, int(r_out * frac))
        return factorize_conv(m, r_in, r_out)

    swap_modules(model, lambda m, n: factorizable(m) and n != "conv1", rep)
    return model


def main():
    if "--breakdown" in sys.argv:  # --breakdown MODEL.int8.onnx [MODEL.fp32.onnx]
        import json

        i = sys.argv.index("--breakdown")
        print(json.dumps(int8_breakdown(*sys.argv[i + 1:i + 3]), indent=2))
        return
    if "--estimate" in sys.argv:  # --estimate CHECKPOINT [ONNX]: ranks.estimate_bytes of a model next to a real file
        from edgeclean.load import load_suspect

        i = sys.argv.index("--estimate")
        model, _ = load_suspect(sys.argv[i + 1])
        real = f", real file {os.path.getsize(sys.argv[i + 2]):,} B" if len(sys.argv) > i + 2 else ""
        print(f"{sys.argv[i + 1]}: estimate fp32 {estimate_bytes(model, 'fp32'):,} B, int8 "
              f"{estimate_bytes(model, 'int8'):,} B{real}")
        return
    if "--ratios" in sys.argv:  # --ratios [OUT.json]
        torch.set_num_threads(1)
        i = sys.argv.index("--ratios")
        ratios(sys.argv[i + 1] if len(sys.argv) > i + 1 else None)
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cases = [
        ("tiny_cnn", dict(num_classes=10, in_channels=1), None),
        ("resnet18 w0.25", dict(num_classes=10, in_channels=1, width=0.25), None),
        ("resnet18 w0.25 fact0.5", dict(num_classes=10, in_channels=1, width=0.25), 0.5),
        ("resnet18", dict(num_classes=10, in_channels=1), None),
        ("resnet18 fact0.25", dict(num_classes=10, in_channels=1), 0.25),
        ("vgg11_bn w0.5", dict(num_classes=10, in_channels=3, width=0.5), None),
        ("mobilenetv2 w0.5", dict(num_classes=10, in_channels=3, width=0.5), None),
        ("preact_resnet18 w0.25 fact0.5", dict(num_classes=10, in_channels=3, width=0.25), 0.5),
    ]
    rows = {"fp32": [], "int8": []}
    print(f"{'model':32s} {'prec':5s} {'file':>11s} {'estimate':>11s} {'err%':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw, frac in cases:
            arch = label.split()[0]
            model = create_model(arch, **kw)
            # non-trivial BN statistics so folding cannot drop anything
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 2)
            if frac:
                model = factorised(model, frac)
            shape = (kw["in_channels"], 28, 28)
            f32 = os.path.join(tmp, "m.onnx")
            export(model, shape, f32)
            q8 = os.path.join(tmp, "m8.onnx")
            quantize(f32, q8, shape)
            for prec, path in (("fp32", f32), ("int8", q8)):
                real = os.path.getsize(path)
                est = estimate_bytes(model, prec)
                rows[prec].append((model_counts(model), real))
                print(f"{label:32s} {prec:5s} {real:11,d} {est:11,d} {100 * (est - real) / real:6.1f}")
    if "--fit" in sys.argv:
        # least squares for the per-item costs; the per-weight costs are fixed (4 / 1 bytes; the float head 4)
        for prec, data in rows.items():
            keys = ["channel", "inner", "tensor", "fixed"]
            a = np.array([[c[k] for k in keys] for c, _ in data], dtype=float)
            b = np.array([real - per_element(c, prec) for c, real in data], dtype=float)
            w = 1.0 / np.array([real for _, real in data], dtype=float)  # fit relative error
            sol, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
            print(prec, "fit:", {k: round(float(v), 1) for k, v in zip(keys, sol)})
            fitted = a @ sol + np.array([per_element(c, prec) for c, _ in data], dtype=float)
            errs = [f"{100 * (e - real) / real:+.1f}%" for e, (_, real) in zip(fitted, data)]
            print(prec, "errors with the fitted constants:", " ".join(errs))
            # the same fit with no negative cost (a negative fixed or per-rank cost makes small models
            # look cheaper than they are): drop the most negative term and refit until none is left
            active = list(range(len(keys)))
            while True:
                sub, *_ = np.linalg.lstsq((a * w[:, None])[:, active], b * w, rcond=None)
                if (sub >= 0).all():
                    break
                del active[int(np.argmin(sub))]
            nonneg = np.zeros(len(keys))
            nonneg[active] = sub
            print(prec, "non-negative fit:", {k: round(float(v), 1) for k, v in zip(keys, nonneg)})
            fitted = a @ nonneg + (fitted - a @ sol)
            errs = [f"{100 * (e - real) / real:+.1f}%" for e, (_, real) in zip(fitted, data)]
            print(prec, "errors with the non-negative constants:", " ".join(errs))


if __name__ == "__main__":
    main()
