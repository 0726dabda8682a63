"""int8 agreement with fp32 on a user-defined net, with each of the "smooth_stem" and "classifier" rules
(``Int8Config.keep_fp32``): the images `edgeclean run` uses (calibration: the scan's 128 synthetic
images of the suspect, seed 0; gate: 256 held-out synthetic images, seed 2) and 2,000 real test images.

    OMP_NUM_THREADS=1 python benchmarks/unseen/int8_user.py SUSPECT.pt CLEANED.safetensors [...pairs]

CLEANED is `run`'s cleaned.safetensors for SUSPECT (its card gives the spec). CC_NOTES sections 20 and 25.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from train_user import to_input

from edgeclean.data import load_fashion_mnist
from edgeclean.export import (ExportConfig, Int8Config, _as_array, calibration_images, fold_batchnorm,
                              quantize_int8, run_onnx, to_onnx)
from edgeclean.load import load_suspect
from edgeclean.scan import ScanConfig, scan

SETTINGS = {"classifier float": ("classifier",), "smooth_stem float": ("smooth_stem",),
            "both (default)": ("classifier", "smooth_stem")}


def agreement(fp32: Path, int8: Path, x: np.ndarray) -> float:
    return float(np.mean(run_onnx(fp32, x).argmax(1) == run_onnx(int8, x).argmax(1)))


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    test = load_fashion_mnist("test").x[:2000]
    tmp = Path(tempfile.mkdtemp())
    print("| cleaned model | int8 setting | gate (256 synthetic) | 2,000 real | int8 / fp32 bytes |")
    print("|---|---|---|---|---|")
    for suspect_path, cleaned_path in zip(paths[::2], paths[1::2]):
        suspect, spec = load_suspect(suspect_path)
        # run's calibration images: the scan's synthetic set (its probes add nothing to it)
        calib = _as_array(scan(suspect.eval(), spec, ScanConfig(seed=0, universal=None, grating=None)).images)
        gate, _ = calibration_images(suspect, spec, 256, 2)
        cleaned, cspec = load_suspect(cleaned_path)
        real = np.ascontiguousarray(to_input(test, cspec.input_shape).numpy())
        fp32 = tmp / "fp32.onnx"
        to_onnx(fold_batchnorm(cleaned.eval())[0], cspec, fp32, ExportConfig(seed=0, write_ort=False))
        for name, keep in SETTINGS.items():
            int8 = tmp / "int8.onnx"
            quantize_int8(fp32, int8, calib, Int8Config(keep_fp32=keep))
            print(f"| {cleaned_path} | {name} | {agreement(fp32, int8, gate) * 100:.1f} % | "
                  f"{agreement(fp32, int8, real) * 100:.1f} % | {int8.stat().st_size / fp32.stat().st_size:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
