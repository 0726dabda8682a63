"""Calibrate edgeclean.ranks' byte model against real ONNX files.

Exports dense and factorised zoo models with the export stage itself (``edgeclean.export``: BN
folded, onnxsim, opset 17, ir_version 13, short names) and its int8 path (``quantize_int8``: static
QDQ S8S8, per-channel weights, float biases, compacted), and prints the real file size next to
``ranks.estimate_bytes``. ``--fit`` prints least-squares constants for ``ranks.COST``.

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/onnx_bytes.py [--fit]
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


def export(model: nn.Module, shape, path: str) -> None:
    """The fp32 artifact exactly as the export stage writes it (BN folded, onnxsim, short names)."""
    spec = ModelSpec(arch="zoo", input_shape=tuple(shape))
    export_onnx(model.eval(), spec, path, config=ExportConfig(write_ort=False, parity_samples=4))


def quantize(src: str, dst: str, shape) -> None:
    """The int8 artifact as the export stage writes it (QDQ S8S8 per channel, compacted); the file
    size does not depend on the calibration values, so a few noise images calibrate it."""
    quantize_int8(Path(src), Path(dst), np.random.default_rng(0).random((4, *shape), dtype=np.float32))


def factorised(model: nn.Module, frac: float) -> nn.Module:
    def rep(m, n):
        r_in, r_out = full_ranks(m)
        r_in, r_out = max(1, int(r_in * frac)), max(1, int(r_out * frac))
        return factorize_conv(m, r_in, r_out)

    swap_modules(model, lambda m, n: factorizable(m) and n != "conv1", rep)
    return model


def main():
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
        # least squares for the per-item costs; the per-weight cost is fixed (4 / 1 bytes)
        for prec, data in rows.items():
            keys = ["channel", "inner", "tensor", "fixed"]
            a = np.array([[c[k] for k in keys] for c, _ in data], dtype=float)
            b = np.array([real - COST[prec]["weight"] * c["weight"] for c, real in data], dtype=float)
            w = 1.0 / np.array([real for _, real in data], dtype=float)  # fit relative error
            sol, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
            print(prec, "fit:", {k: round(float(v), 1) for k, v in zip(keys, sol)})
            fitted = a @ sol + COST[prec]["weight"] * np.array([c["weight"] for c, _ in data], dtype=float)
            errs = [f"{100 * (e - real) / real:+.1f}%" for e, (_, real) in zip(fitted, data)]
            print(prec, "errors with the fitted constants:", " ".join(errs))


if __name__ == "__main__":
    main()
