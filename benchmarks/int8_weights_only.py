"""The int8 fallback on cleaned models whose static int8 file failed ``run``'s gate: int8 weights with float
activations (``ExportConfig.int8_weights_only_fallback``).

    OMP_NUM_THREADS=1 python benchmarks/int8_weights_only.py SUSPECT.pt RUN_DIR [SUSPECT.pt RUN_DIR ...] \\
        [--real 2000] [--out benchmarks/results/int8_weights_only.json]

RUN_DIR: an ``edgeclean run --precision int8`` output (``cleaned.safetensors`` + ``cleaned.json``). The images
are the ones ``run`` uses: calibration on the scan's 128 synthetic images of the suspect (seed 0), the gate on 256
more (seed 2). Per pair: the static int8 file alone (top-1 agreement with fp32 on the gate's images, on the
calibration images and on real test images when the card names a dataset whose images fit the model), then what
``export`` writes for ``run`` from the same images, its size and its agreement on the same sets; and the median
latency (``edgeclean bench``'s: 1 seeded image, 1 thread, 300 runs after 20) of the fp32, static int8 and written
files with onnxruntime's default session options, and of the written file with ``session.disable_quant_qdq=1``
(which lets onnxruntime fold a weights-only file's DequantizeLinear nodes into float weights when it loads it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import write_cell  # noqa: E402
from edgeclean.bench import bench_host  # noqa: E402
from edgeclean.data import load_dataset  # noqa: E402
from edgeclean.errors import GateFailed  # noqa: E402
from edgeclean.export import ExportConfig, calibration_images, export, quantize_int8, run_onnx  # noqa: E402
from edgeclean.load import load_suspect  # noqa: E402
from edgeclean.metrics import wilson_interval  # noqa: E402
from edgeclean.scan import ScanConfig  # noqa: E402
from edgeclean.synth import synthesize  # noqa: E402


def agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    same = int(np.sum(ref.argmax(1) == out.argmax(1)))
    return {"agreement": round(same / len(ref), 4), "ci95_hi": round(wilson_interval(same, len(ref))[1], 4)}


def median_ms(path: Path, session_config: dict | None = None) -> float:
    """p50 latency of one seeded image, 1 thread, 300 runs after 20 (``edgeclean bench``'s own measurement)."""
    return round(bench_host(path, threads=1, runs=300, warmup=20, profile=False,
                            session_config=session_config)["latency_ms"]["p50"], 3)


def measure(suspect_path: str, run_dir: str, n_real: int) -> dict:
    suspect, spec = load_suspect(suspect_path)
    card_path = Path(suspect_path).with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    cspec = json.loads((Path(run_dir) / "cleaned.json").read_text())["spec"]
    cleaned, _ = load_suspect(Path(run_dir) / "cleaned.safetensors", input_shape=tuple(cspec["input_shape"]),
                              mean=cspec["mean"], std=cspec["std"])
    suspect.eval(), cleaned.eval()
    t0 = time.perf_counter()
    scan_cfg = ScanConfig(seed=0)
    calib = synthesize(suspect, spec, scan_cfg.n, replace(scan_cfg.synth, seed=0)).detach().numpy()
    gate, _ = calibration_images(suspect, spec, ExportConfig().gate_samples, 2)
    sets = {"gate": gate, "calib": calib}
    if n_real and card.get("dataset"):
        x = np.asarray(load_dataset(card["dataset"], "test").x[:n_real], dtype=np.float32)
        if tuple(x.shape[1:]) == tuple(spec.input_shape):  # a user net trained on resized images: skipped
            sets["real"] = x
    row = {"suspect": suspect_path, "run_dir": run_dir, "images_s": round(time.perf_counter() - t0, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "model.onnx"
        fp32 = Path(tmp) / "fp32.onnx"
        export(cleaned, spec, fp32, config=ExportConfig(write_ort=False))
        ref = {k: run_onnx(fp32, x) for k, x in sets.items()}
        static = Path(tmp) / "static.onnx"
        quantize_int8(fp32, static, calib)
        row["static"] = {"bytes": static.stat().st_size, "int8_over_fp32": round(static.stat().st_size / fp32.stat().st_size, 4),
                         **{k: agreement(ref[k], run_onnx(static, x)) for k, x in sets.items()}}
        try:
            info = export(cleaned, spec, art, "int8", calib=calib, eval_inputs=gate, config=ExportConfig(write_ort=False))
            row["written"] = {"activations": info["int8_activations"], "bytes": info["int8_bytes"],
                              "int8_over_fp32": round(info["int8_size_ratio"], 4),
                              **{k: agreement(ref[k], run_onnx(art, x)) for k, x in sets.items()}}
            row["latency_ms_1_thread"] = {
                "fp32": median_ms(fp32), "static_int8": median_ms(static), "written": median_ms(art),
                "written_disable_quant_qdq": median_ms(art, {"session.disable_quant_qdq": "1"})}
        except GateFailed as exc:
            row["written"] = {"gate_failed": str(exc)}
    budget = json.loads((Path(run_dir) / "report.json").read_text()).get("budget_bytes") \
        if (Path(run_dir) / "report.json").exists() else None
    row["budget_bytes"] = budget
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", help="SUSPECT.pt RUN_DIR, repeated")
    ap.add_argument("--real", type=int, default=2000, help="real test images (measured only; 0: none)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give SUSPECT.pt RUN_DIR pairs")
    torch.set_num_threads(1)
    rows = [measure(s, d, args.real) for s, d in zip(args.pairs[::2], args.pairs[1::2])]
    if args.out:
        write_cell(Path(args.out), {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
