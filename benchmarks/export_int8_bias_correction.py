"""Does empirical bias correction help int8 agreement? (Measured: no; kept as the record of the attempt.)

Biases stay float in the int8 file, so shifting them costs no bytes: after quantisation, each Conv
bias is moved by the mean per-channel difference between the int8 and fp32 conv outputs on the
synthetic calibration images (one pass, then a second). Agreement (flips = images whose top-1 differs
from the fp32 artifact) on the 256 held-out (seed 1) and 512 more (seed 2) synthetic images, for the
default ``Int8Config`` and after each pass. Needs the cache of ``export_suspects.py --cache`` and the
seed-2 images of ``int8_sweep.py --more-held 512``:

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/export_int8_bias_correction.py /work/cache_int8 \\
        [--out benchmarks/results/export_suspects_int8_bias_correction.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edgeclean.export import ExportConfig, Int8Config, export, quantize_int8, run_onnx  # noqa: E402
from export_suspects import load_cleaned  # noqa: E402


def mean_conv_outputs(path: Path, x: np.ndarray, names: set[str]) -> dict[str, np.ndarray]:
    """Per-channel mean of the named Conv nodes' outputs over ``x`` (the outputs made graph outputs)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    outs = {n.name: n.output[0] for n in m.graph.node if n.name in names}
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=v) for v in outs.values() if v not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    keys = [o.name for o in sess.get_outputs()]
    sums = {k: 0.0 for k in outs}
    for i in range(0, len(x), 32):
        r = dict(zip(keys, sess.run(None, {"input": x[i:i + 32]})))
        for k, v in outs.items():
            sums[k] = sums[k] + r[v].sum(axis=(0, 2, 3)) / (r[v].shape[2] * r[v].shape[3])
    return {k: v / len(x) for k, v in sums.items()}


def correct_biases(fp32: Path, int8: Path, calib: np.ndarray) -> None:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(int8))
    inits = {t.name: t for t in m.graph.initializer}
    convs = {n.name for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits}
    ref, got = mean_conv_outputs(fp32, calib, convs), mean_conv_outputs(int8, calib, convs)
    for n in m.graph.node:
        if n.name in convs:
            b = numpy_helper.to_array(inits[n.input[2]]) - (got[n.name] - ref[n.name]).astype(np.float32)
            inits[n.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), n.input[2]))
    onnx.save(m, str(int8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cache = Path(args.cache)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for st in sorted(p.name.removesuffix(".safetensors") for p in cache.glob("*.safetensors")):
            f32 = cache / f"{st}.fp32.onnx"
            if not f32.exists():
                model, spec = load_cleaned(cache / st)
                export(model, spec, f32, config=ExportConfig(write_ort=False))
            calib = np.load(cache / f"{st}.calib.npy")
            sets = {"seed1_256": np.load(cache / f"{st}.held.npy"), "seed2_512": np.load(cache / f"{st}.held2_512.npy")}
            refs = {k: run_onnx(f32, v).argmax(1) for k, v in sets.items()}
            q8 = Path(tmp) / "q.onnx"
            quantize_int8(f32, q8, calib, Int8Config())
            row = {"model": st}
            for stage in ("default", "bias corrected x1", "bias corrected x2"):
                if stage != "default":
                    correct_biases(f32, q8, calib)
                row[stage] = {k: int(np.sum(run_onnx(q8, v).argmax(1) != refs[k])) for k, v in sets.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    total = {s: {k: sum(r[s][k] for r in rows) for k in ("seed1_256", "seed2_512")}
             for s in ("default", "bias corrected x1", "bias corrected x2")}
    print("total flips:", json.dumps(total))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "total_flips": total}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
