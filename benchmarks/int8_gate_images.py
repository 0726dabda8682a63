"""Which synthetic images should the int8 gate be judged on? Agreement of the int8 artifact with the fp32 one on
ZeroQ images (what the gate uses), on class-balanced synthetic images (``SynthConfig.ce_weight``) and on real test
images, for the default quantisation and for deliberately worse ones (a gate must still fail those).

    OMP_NUM_THREADS=1 python benchmarks/int8_gate_images.py MODEL [...] [--n 768] [--ce 0.05] [--real 2000] \\
        [--settings 8-bit 7-bit per-tensor] [--out benchmarks/results/int8_gate_images.json]

MODEL: a cleaned model cached by ``export_suspects.py --cache DIR`` (``DIR/<stem>.safetensors``; its cached 64
calibration images are reused) or a checkpoint as it is (``.pt``; calibration: 64 synthetic images, seed 0, the
export recipe). Per model: n ZeroQ images (seed 2) and n class-balanced ones (seed 3, CE towards labels i % classes
with weight ``--ce``), synthesised from the model itself, no real data; the fp32 top-2 logit margin of each set
(median, 10th percentile) against the real test images'. Per setting: top-1 agreement int8 vs fp32 on each set with
its 95% Wilson interval (the gate fails when the interval's upper end is below 99%), the int8 / fp32 bytes, and
on every set the same file run with onnxruntime's graph optimisations off ("<set>_unfused": no fused int8
kernels, so no saturation; the x86 kernels without VNNI saturate, see ``Int8Config.reduce_range``).
Real images are only measured, never used for calibration or the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from export_suspects import card_of, load_cleaned  # noqa: E402
from edgeclean.data import load_dataset  # noqa: E402
from edgeclean.export import ExportConfig, Int8Config, export, quantize_int8, run_onnx  # noqa: E402
from edgeclean.load import load_suspect  # noqa: E402
from edgeclean.metrics import wilson_interval  # noqa: E402
from edgeclean.synth import SynthConfig, synthesize  # noqa: E402

# name -> (Int8Config, calibration images used); "worse": a setting measured (or built) to be worse than the default
SETTINGS = {
    "default": (Int8Config(), None),  # reduce_range None: 7-bit weights where this CPU's int8 kernels saturate
    "8-bit": (Int8Config(reduce_range=False), None),
    "7-bit": (Int8Config(reduce_range=True), None),
    "classifier-int8": (Int8Config(keep_fp32=("smooth_stem",)), None),  # worse: the session-2 default (Int8Config)
    "no-smooth-stem": (Int8Config(keep_fp32=("classifier",)), None),  # worse: a SiLU stem quantised (CC_NOTES 20 (b))
    "u8u8": (Int8Config(reduce_range=False, activation_type="uint8", weight_type="uint8"), None),
    "u8s8-8-bit": (Int8Config(reduce_range=False, activation_type="uint8"), None),
    "per-tensor": (Int8Config(per_tensor_max_channels=10**6, reduce_range=False), None),
    "calib-8": (Int8Config(), 8),  # worse: ranges from 8 images only
    "percentile-99.99": (Int8Config(calibrate_method="percentile", percentile=99.99), None),
    "percentile-99.999": (Int8Config(calibrate_method="percentile", percentile=99.999), None),
    "entropy": (Int8Config(calibrate_method="entropy"), None),
}


def margins(logits: np.ndarray) -> tuple[float, float]:
    """Median and 10th percentile of the top-1 minus top-2 logit."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    m = top2[:, 1] - top2[:, 0]
    return round(float(np.median(m)), 3), round(float(np.percentile(m, 10)), 3)


def run_onnx_unfused(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits with every graph optimisation off: Q/DQ nodes stay, convolutions run in float (the int8
    arithmetic onnxruntime's fused kernels approximate)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def load(path: Path):
    """(model, spec, card, calibration images or None) for a cached cleaned model or a plain checkpoint."""
    if path.suffix == ".safetensors":
        model, spec = load_cleaned(path.with_suffix(""))
        calib = path.with_suffix(".calib.npy")
        return model, spec, card_of(str(path)), (np.load(calib) if calib.exists() else None)
    model, spec = load_suspect(path)
    return model, spec, card_of(str(path)), None


def measure(path: Path, args) -> dict:
    model, spec, card, calib = load(path)
    model.eval()
    if calib is None:  # export_suspects.py's recipe: seed 0, a quarter more synthesised than kept
        calib = synthesize(model, spec, 80).detach().numpy()[:64]
    t0 = time.perf_counter()
    sets = {"zeroq": synthesize(model, spec, args.n, SynthConfig(seed=2)).detach().numpy()}
    if args.ce:
        sets[f"ce{args.ce:g}"] = synthesize(model, spec, args.n, SynthConfig(seed=3, ce_weight=args.ce)).detach().numpy()
    synth_s = time.perf_counter() - t0
    if args.real and card.get("dataset"):
        ds = load_dataset(card["dataset"], "test")
        sets["real"] = np.asarray(ds.x[:args.real], dtype=np.float32)
    row = {"model": path.stem, "synthesis_s": round(synth_s, 1), "sets": {}, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "m.onnx"
        export(model, spec, fp32, config=ExportConfig(write_ort=False))
        ref = {k: run_onnx(fp32, x) for k, x in sets.items()}
        row["sets"] = {k: {"n": len(x), "margin_median_q10": margins(ref[k])} for k, x in sets.items()}
        for name in args.settings:
            cfg, n_calib = SETTINGS[name]
            q = Path(tmp) / f"{name}.onnx"
            quantize_int8(fp32, q, calib[:n_calib] if n_calib else calib, cfg)
            agree = {}
            for k, x in sets.items():
                same = int(np.sum(run_onnx(q, x).argmax(1) == ref[k].argmax(1)))
                lo, hi = wilson_interval(same, len(x))
                agree[k] = {"agreement": round(same / len(x), 4), "ci95": [round(lo, 4), round(hi, 4)],
                            "gate_fails": hi < 0.99}
            for k in list(sets):  # the same file without onnxruntime's fused int8 kernels: QDQ in float
                same = int(np.sum(run_onnx_unfused(q, sets[k]).argmax(1) == ref[k].argmax(1)))
                agree[f"{k}_unfused"] = {"agreement": round(same / len(sets[k]), 4)}
            row["settings"][name] = {"agreement": agree, "int8_over_fp32": round(q.stat().st_size / fp32.stat().st_size, 4)}
            print(path.stem, f"{name:16s}", " ".join(
                f"{k} {v['agreement']:.2%}{' FAIL' if v.get('gate_fails') else ''}" for k, v in agree.items()), flush=True)
    print(path.stem, "margins median/q10", {k: v["margin_median_q10"] for k, v in row["sets"].items()},
          f"synthesis {synth_s:.0f}s", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=768, help="synthetic images per set")
    ap.add_argument("--ce", type=float, default=0.05, help="SynthConfig.ce_weight of the class-balanced set (0: no such set)")
    ap.add_argument("--real", type=int, default=2000, help="real test images (measured only; 0: none)")
    ap.add_argument("--settings", nargs="+", default=["8-bit", "7-bit", "classifier-int8", "per-tensor", "calib-8"],
                    choices=list(SETTINGS))
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(Path(p), args) for p in args.models]
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
