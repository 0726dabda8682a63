"""Sweep int8 quantisation settings on cleaned models: top-1 agreement with fp32 AND int8 / fp32 bytes.

The cleaning is the slow part, so it is done once by ``export_suspects.py --finetune --cache DIR``
(cleaned models + their synthetic calibration / held-out images); this script re-quantises the
cached fp32 ONNX files under each ``Int8Config`` and measures both figures the export target is
about (they pull against each other: a layer kept float costs bytes):

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/export_suspects.py benchmarks/suspects/{resnet18,vgg11}_*.pt \\
        --finetune --cache /work/cache_int8 --out /tmp/baseline.json
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/int8_sweep.py /work/cache_int8 [--settings NAME ...] \\
        [--calib N] [--out benchmarks/results/int8_sweep.json]

Agreement is measured on the 256 held-out synthetic images (synthesis seed 1; calibration used seed
0), as export_suspects.py does, and with ``--more-held 512`` on 512 more (seed 2): the 768 together
get a 95% Wilson interval and the mean |int8 - fp32| logit error, a far less noisy figure than the
flips (``<out>_agreement.md``; ``--markdown RESULT.json`` rewrites it; ``--compare BEFORE.json
AFTER.json`` tabulates the bytes of two sweeps and whether their outputs are identical). The cached
fp32 file is first brought to the current format (``export.compact``, bit-identical logits checked),
so the ratio is the one the export stage gives now. The setting "int8 weights
only (float activations)" rounds the fp32 file's conv weights to the int8 grid and keeps everything
else float, to split the error. Real test images are never used for calibration, only reported
(``--real-limit``). ``--calib N`` with N above the cached 64 synthesises more calibration images
(seed 0, cached as ``<stem>.calib<N>.npy``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edgeclean.export import ExportConfig, Int8Config, export, quantize_int8, run_onnx  # noqa: E402
from edgeclean.metrics import wilson_interval  # noqa: E402
from export_suspects import load_cleaned  # noqa: E402
from onnx_bytes import int8_breakdown  # noqa: E402

BASE = Int8Config(keep_fp32=(), share_zero_points=False)  # the settings before this sweep
# Not a quantised file: the fp32 graph with its conv weights rounded to the int8 grid (per output
# channel, scale = max|w| / 127, as quantize_int8 does) and activations left float, to tell how much of
# the int8 logit error the weights cause.
WEIGHTS_ONLY = "int8 weights only (float activations)"


def weights_only(fp32_path: Path, out_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(fp32_path))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 1}
    for t in proto.graph.initializer:
        if t.name in conv_weights:
            w = numpy_helper.to_array(t)
            scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
            t.CopyFrom(numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32), t.name))
    onnx.save(proto, str(out_path))


SETTINGS: dict[str, Int8Config] = {
    WEIGHTS_ONLY: Int8Config(),  # (its config is unused: see weights_only)
    "default": Int8Config(),  # MinMax, classifier fp32, shared zero points (chosen by this sweep)
    "minmax (previous default)": BASE,
    "minmax + shared zp": replace(BASE, share_zero_points=True),
    "minmax int32 bias": replace(BASE, quantize_bias=True),
    "entropy": replace(BASE, calibrate_method="entropy"),
    "percentile 99.999": replace(BASE, calibrate_method="percentile", percentile=99.999),
    "percentile 99.99": replace(BASE, calibrate_method="percentile", percentile=99.99),
    "minmax moving-average": replace(BASE, moving_average=True),
    "minmax symmetric act": replace(BASE, symmetric_activations=True),
    "minmax fp32 first conv": replace(BASE, keep_fp32=("first_conv",)),
    "minmax fp32 classifier": replace(BASE, keep_fp32=("classifier",)),
    "minmax fp32 first conv + classifier": replace(BASE, keep_fp32=("first_conv", "classifier")),
    "minmax per-tensor <= 8 ch": replace(BASE, per_tensor_max_channels=8),
    "minmax per-tensor <= 16 ch": replace(BASE, per_tensor_max_channels=16),
    "minmax per-tensor <= 32 ch": replace(BASE, per_tensor_max_channels=32),
    "minmax per-tensor all": replace(BASE, per_tensor_max_channels=10**9),
    "moving-average + shared zp": replace(BASE, moving_average=True, share_zero_points=True),
    "moving-average + fp32 classifier": replace(BASE, moving_average=True, keep_fp32=("classifier",),
                                                share_zero_points=True),
    "moving-average + per-tensor <= 8 ch": replace(BASE, moving_average=True, per_tensor_max_channels=8,
                                                   share_zero_points=True),
    "moving-average + per-tensor <= 16 ch": replace(BASE, moving_average=True, per_tensor_max_channels=16,
                                                    share_zero_points=True),
    "moving-average + per-tensor all": replace(BASE, moving_average=True, per_tensor_max_channels=10**9,
                                               share_zero_points=True),
    "moving-average batch 4": replace(BASE, moving_average=True, calibration_batch=4, share_zero_points=True),
    "moving-average batch 8": replace(BASE, moving_average=True, calibration_batch=8, share_zero_points=True),
    "moving-average batch 32": replace(BASE, moving_average=True, calibration_batch=32, share_zero_points=True),
    "moving-average batch 64": replace(BASE, moving_average=True, calibration_batch=64, share_zero_points=True),
    "moving-average batch 64 + fp32 classifier": replace(BASE, moving_average=True, calibration_batch=64,
                                                         keep_fp32=("classifier",), share_zero_points=True),
    "moving-average batch 8 + fp32 classifier": replace(BASE, moving_average=True, calibration_batch=8,
                                                        keep_fp32=("classifier",), share_zero_points=True),
    "moving-average batch 4 + fp32 classifier": replace(BASE, moving_average=True, calibration_batch=4,
                                                        keep_fp32=("classifier",), share_zero_points=True),
    "entropy + fp32 classifier": replace(BASE, calibrate_method="entropy", keep_fp32=("classifier",),
                                         share_zero_points=True),
    # cross-layer equalisation (session 4): inside the factorised blocks, and also across ReLUs
    "default + CLE linear": Int8Config(equalize="linear"),
    "default + CLE relu": Int8Config(equalize="relu"),
    "CLE linear, classifier int8": Int8Config(equalize="linear", keep_fp32=()),
    "CLE relu, classifier int8": Int8Config(equalize="relu", keep_fp32=()),
    "CLE linear + per-tensor all": Int8Config(equalize="linear", per_tensor_max_channels=10**9),
    "CLE relu + per-tensor all": Int8Config(equalize="relu", per_tensor_max_channels=10**9),
    "CLE relu + per-tensor <= 32 ch": Int8Config(equalize="relu", per_tensor_max_channels=32),
    "default + per-tensor all": Int8Config(per_tensor_max_channels=10**9),
    # session 5: per-tensor scales only where a channel has few weights (its scale costs the most)
    "default + per-tensor fan-in <= 16": Int8Config(per_tensor_max_fan_in=16),
    "default + per-tensor fan-in <= 32": Int8Config(per_tensor_max_fan_in=32),
    "default + per-tensor fan-in <= 64": Int8Config(per_tensor_max_fan_in=64),
    "default + per-tensor fan-in <= 100": Int8Config(per_tensor_max_fan_in=100),
    "default, classifier int8": Int8Config(keep_fp32=()),
    # GPTQ weight rounding and activation-range equalisation were measured at commit b952a03
    # (results/int8_sweep_session4.json) and removed: neither raised agreement
}


def current_format(f32: Path, out: Path, x: np.ndarray) -> Path:
    """The cached fp32 file in the format the export stage writes now (``export.compact``: an older
    cache has longer names and more attributes), so that int8 / fp32 compares like with like; the
    compacted copy must give bit-identical logits."""
    import onnx

    from edgeclean.export import compact

    proto = onnx.load(str(f32))
    compact(proto)
    onnx.save(proto, str(out))
    if not np.array_equal(run_onnx(f32, x), run_onnx(out, x)):
        raise SystemExit(f"{f32}: compacting changed the fp32 outputs")
    return out


def top2_margins(logits: np.ndarray) -> np.ndarray:
    """Per image: the top logit minus the runner-up (int8 can only flip images where this is small)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def calib_images(cache: Path, stem: str, n: int, model, spec) -> np.ndarray:
    base = np.load(cache / f"{stem}.calib.npy")
    if n <= len(base):
        return base[:n]
    path = cache / f"{stem}.calib{n}.npy"
    if not path.exists():
        from edgeclean.synth import synthesize

        np.save(path, synthesize(model, spec, n).detach().numpy())
    return np.load(path)


def more_held(cache: Path, stem: str, n: int, model, spec) -> np.ndarray | None:
    """A second held-out synthetic set (synthesis seed 2), to choose between settings on more images
    than the 256 the target is stated on."""
    if n <= 0:
        return None
    path = cache / f"{stem}.held2_{n}.npy"
    if not path.exists():
        from edgeclean.synth import SynthConfig, synthesize

        np.save(path, synthesize(model, spec, n, SynthConfig(seed=2)).detach().numpy())
    return np.load(path)


def real_images(card: dict, limit: int):
    if limit <= 0 or not card.get("dataset"):
        return None
    from edgeclean.data import load_dataset

    ds = load_dataset(card["dataset"], "test")
    return np.asarray(ds.x[:limit], dtype=np.float32)


def compare_markdown(before: dict, after: dict, setting: str = "default") -> str:
    """Per model: int8 / fp32 bytes and ratio in two saved sweeps of one setting, and whether every
    output-derived figure (agreement on 256 / 512 / real images, logit error) is identical."""
    old = {r["model"]: r for r in before["rows"] if r["setting"] == setting}
    new = [r for r in after["rows"] if r["setting"] == setting]
    keys = ("agreement_synthetic", "agreement_synthetic_seed2", "agreement_real", "logit_error")
    out = ["| model | fp32 before | int8 before | ratio before | fp32 after | int8 after | ratio after | <= 0.27 "
           "| 768 agreement | outputs identical |", "|---|---:|---:|---:|---:|---:|---:|:-:|---:|:-:|"]
    for r in new:
        o = old[r["model"]]
        same = all(o.get(k) == r.get(k) for k in keys)
        a = r["agreement_synthetic_all"]
        out.append(f"| {r['model']} | {o['fp32_bytes']:,} | {o['int8_bytes']:,} | {o['int8_size_ratio']:.4f} "
                   f"| {r['fp32_bytes']:,} | {r['int8_bytes']:,} | {r['int8_size_ratio']:.4f} "
                   f"| {'yes' if r['int8_size_ratio'] <= 0.27 else 'no'} | {a['rate']:.2%} | {'yes' if same else 'NO'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    if "--compare" in sys.argv:  # --compare BEFORE.json AFTER.json [SETTING]: bytes before/after, same outputs?
        i = sys.argv.index("--compare")
        before, after = (json.loads(Path(p).read_text()) for p in sys.argv[i + 1:i + 3])
        print(compare_markdown(before, after, *sys.argv[i + 3:i + 4]), end="")
        return 0
    if "--markdown" in sys.argv:  # --markdown RESULT.json: (re)write RESULT_agreement.md from a saved sweep
        path = Path(sys.argv[sys.argv.index("--markdown") + 1])
        d = json.loads(path.read_text())
        text = agreement_markdown(d["rows"], d["summary"], argparse.Namespace(**d["args"]), d["env"])
        path.with_name(path.stem + "_agreement.md").write_text(text)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", help="folder written by export_suspects.py --cache")
    ap.add_argument("--settings", nargs="*", help=f"names from: {'; '.join(SETTINGS)}")
    ap.add_argument("--calib", type=int, default=64, help="calibration images (synthetic, seed 0)")
    ap.add_argument("--real-limit", type=int, default=1000)
    ap.add_argument("--more-held", type=int, default=0,
                    help="also measure agreement on this many more held-out synthetic images (seed 2)")
    ap.add_argument("--models", nargs="*", help="cached stems to use (default: all in the folder)")
    ap.add_argument("--breakdown", action="store_true",
                    help="add onnx_bytes.int8_breakdown per file, and a markdown table of it beside --out")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    names = args.settings or list(SETTINGS)
    stems = sorted(p.name.removesuffix(".safetensors") for p in cache.glob("*.safetensors"))
    stems = [s for s in stems if not args.models or s in args.models]
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem in stems:
            model, spec = load_cleaned(cache / stem)
            card = json.loads((cache / f"{stem}.json").read_text())
            f32 = cache / f"{stem}.fp32.onnx"
            if not f32.exists():
                export(model, spec, f32, config=ExportConfig(write_ort=False))
            f32 = current_format(f32, Path(tmp) / f"{stem}.fp32.onnx", np.load(cache / f"{stem}.held.npy"))
            calib = calib_images(cache, stem, args.calib, model, spec)
            held = np.load(cache / f"{stem}.held.npy")
            real = real_images(card, args.real_limit)
            held2 = more_held(cache, stem, args.more_held, model, spec)
            logits_held2 = run_onnx(f32, held2) if held2 is not None else None
            logits_held = run_onnx(f32, held)
            ref_held2 = logits_held2.argmax(1) if held2 is not None else None
            ref_held = logits_held.argmax(1)
            ref_real = run_onnx(f32, real).argmax(1) if real is not None else None
            for name in names:
                cfg = SETTINGS[name]
                q8 = Path(tmp) / "m.onnx"
                t = time.perf_counter()
                if name == WEIGHTS_ONLY:
                    weights_only(f32, q8)
                else:
                    quantize_int8(f32, q8, calib, cfg)
                row = {"model": stem, "setting": name, "config": asdict(cfg), "calib": int(len(calib)),
                       "fp32_bytes": f32.stat().st_size, "int8_bytes": q8.stat().st_size,
                       "quantise_seconds": round(time.perf_counter() - t, 1)}
                row["int8_size_ratio"] = row["int8_bytes"] / row["fp32_bytes"]
                out_held = run_onnx(q8, held)
                row["agreement_synthetic"] = float(np.mean(out_held.argmax(1) == ref_held))
                # the logit error behind the flips: far less noisy than counting flips, which
                # happen only on the few near-tie images
                diffs = [out_held - logits_held]
                if held2 is not None:
                    out_held2 = run_onnx(q8, held2)
                    diffs.append(out_held2 - logits_held2)
                    row["agreement_synthetic_seed2"] = float(np.mean(out_held2.argmax(1) == ref_held2))
                    # both held-out sets together, with a 95% binomial (Wilson) interval
                    n = len(held) + len(held2)
                    k = round(row["agreement_synthetic"] * len(held) + row["agreement_synthetic_seed2"] * len(held2))
                    row["agreement_synthetic_all"] = {"n": n, "agree": k, "rate": k / n, "ci95": list(wilson_interval(k, n))}
                d = np.concatenate(diffs)
                ref_logits = np.concatenate([logits_held] + ([logits_held2] if held2 is not None else []))
                margin = top2_margins(ref_logits)
                flipped = (ref_logits + d).argmax(1) != ref_logits.argmax(1)
                row["fp32_near_ties"] = {"top2_margin_below_0.1": int(np.sum(margin < 0.1)), "images": int(len(margin)),
                                         "flips": int(flipped.sum()),
                                         "flip_margins": sorted(round(float(m), 4) for m in margin[flipped])}
                row["logit_error"] = {"images": int(len(d)), "mean_abs": float(np.mean(np.abs(d))),
                                      "rms": float(np.sqrt(np.mean(d.astype(np.float64) ** 2)))}
                if real is not None:
                    row["agreement_real"] = float(np.mean(run_onnx(q8, real).argmax(1) == ref_real))
                if args.breakdown:
                    row["breakdown"] = int8_breakdown(str(q8), str(f32))
                rows.append(row)
                print(f"{stem:18s} {name:38s} synth {row['agreement_synthetic']:.2%} "
                      f"seed-2 {row.get('agreement_synthetic_seed2', float('nan')):.2%} "
                      f"real {row.get('agreement_real', float('nan')):.2%} logit rms {row['logit_error']['rms']:.4f} "
                      f"ratio {row['int8_size_ratio']:.4f}", flush=True)
    summary = {}
    for name in names:
        rs = [r for r in rows if r["setting"] == name]
        summary[name] = {
            "models": len(rs),
            "synthetic_ge_99": sum(r["agreement_synthetic"] >= 0.99 for r in rs),
            "synthetic_min": min(r["agreement_synthetic"] for r in rs),
            "synthetic_mean": float(np.mean([r["agreement_synthetic"] for r in rs])),
            "real_mean": float(np.mean([r["agreement_real"] for r in rs])) if "agreement_real" in rs[0] else None,
            "seed2_mean": (float(np.mean([r["agreement_synthetic_seed2"] for r in rs]))
                           if "agreement_synthetic_seed2" in rs[0] else None),
            "seed2_ge_99": (sum(r["agreement_synthetic_seed2"] >= 0.99 for r in rs)
                            if "agreement_synthetic_seed2" in rs[0] else None),
            "all_ge_99": (sum(r["agreement_synthetic_all"]["rate"] >= 0.99 for r in rs)
                          if "agreement_synthetic_all" in rs[0] else None),
            "all_min": (min(r["agreement_synthetic_all"]["rate"] for r in rs)
                        if "agreement_synthetic_all" in rs[0] else None),
            "all_mean": (float(np.mean([r["agreement_synthetic_all"]["rate"] for r in rs]))
                         if "agreement_synthetic_all" in rs[0] else None),
            "logit_rms_mean": float(np.mean([r["logit_error"]["rms"] for r in rs])),
            "logit_mean_abs_mean": float(np.mean([r["logit_error"]["mean_abs"] for r in rs])),
            "ratio_min": min(r["int8_size_ratio"] for r in rs),
            "ratio_max": max(r["int8_size_ratio"] for r in rs),
        }
        s = summary[name]
        print(f"{name:38s} >=99%: {s['synthetic_ge_99']}/{s['models']}  min {s['synthetic_min']:.2%}  "
              f"mean {s['synthetic_mean']:.2%}  real mean {s['real_mean'] or float('nan'):.2%}  "
              f"seed-2 mean {s['seed2_mean'] or float('nan'):.2%} (>=99%: {s['seed2_ge_99']})  "
              f"768: >=99% {s['all_ge_99']}, min {s['all_min'] or float('nan'):.2%}, mean {s['all_mean'] or float('nan'):.2%}  "
              f"logit rms {s['logit_rms_mean']:.4f} |d| {s['logit_mean_abs_mean']:.4f}  "
              f"ratio {s['ratio_min']:.3f}-{s['ratio_max']:.3f}")
    if args.out:
        env = {"load_start": load_start, "load_end": " ".join(f"{v:.2f}" for v in os.getloadavg())}
        Path(args.out).write_text(json.dumps({"args": vars(args), "env": env, "summary": summary, "rows": rows},
                                             indent=1) + "\n")
        if args.breakdown:
            Path(args.out).with_suffix(".md").write_text(breakdown_markdown(rows))
        if args.more_held > 0:
            out = Path(args.out)
            out.with_name(out.stem + "_agreement.md").write_text(agreement_markdown(rows, summary, args, env))
    return 0


def agreement_markdown(rows: list[dict], summary: dict, args, env: dict) -> str:
    """Per setting: models >= 99% on 256 and on 768 held-out images, logit error, ratio; then per model
    for each setting, agreement on 256 and 768 with the 95% Wilson interval."""
    n2 = args.more_held
    out = ["# int8 agreement with the fp32 artifact on held-out synthetic images", "",
           f"Made by `benchmarks/int8_sweep.py {args.cache} --more-held {n2} --settings ... --out {args.out}` "
           f"({args.calib} synthetic calibration images, seed 0; held-out: 256 images of seed 1 and {n2} of seed 2). "
           f"Load average {env['load_start']} -> {env['load_end']} (loaded, 2 shared cores).", "",
           "Pooled: all models' 768-image sets together (flips / images, 95% Wilson interval).", "",
           "| setting | 256: >= 99% | 768: >= 99% | 768: min | 768: mean | pooled | mean abs logit error | logit rms "
           "| int8/fp32 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        rs = [r for r in rows if r["setting"] == name]
        k, n = sum(r["agreement_synthetic_all"]["agree"] for r in rs), sum(r["agreement_synthetic_all"]["n"] for r in rs)
        lo, hi = wilson_interval(k, n)
        out.append(f"| {name} | {s['synthetic_ge_99']}/{s['models']} | {s['all_ge_99']}/{s['models']} | {s['all_min']:.2%} "
                   f"| {s['all_mean']:.2%} | {n - k}/{n}: {k / n:.2%} ({lo:.2%}-{hi:.2%}) | {s['logit_mean_abs_mean']:.4f} "
                   f"| {s['logit_rms_mean']:.4f} | {s['ratio_min']:.3f}-{s['ratio_max']:.3f} |")
    if "default" in summary:
        rs = [r for r in rows if r["setting"] == "default"]
        k, n = sum(r["agreement_synthetic_all"]["agree"] for r in rs), sum(r["agreement_synthetic_all"]["n"] for r in rs)
        p = (n - k) / n
        miss = 1 - sum(math.comb(256, j) * p ** j * (1 - p) ** (256 - j) for j in range(3))
        out += ["", f"At the default's pooled flip rate ({p:.2%}), a model misses 99% on 256 images (3 or more flips) "
                f"with probability {miss:.0%} by chance alone (binomial)."]
    for name in summary:
        out += ["", f"## {name}", "", "| model | 256 held-out | 768 held-out | 95% interval (Wilson) | real test images "
                "| int8 bytes | fp32 bytes | int8/fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["setting"] == name):
            a = r["agreement_synthetic_all"]
            real = f"{r['agreement_real']:.1%}" if "agreement_real" in r else "-"
            out.append(f"| {r['model']} | {r['agreement_synthetic']:.2%} | {a['rate']:.2%} ({a['agree']}/{a['n']}) "
                       f"| {a['ci95'][0]:.2%}-{a['ci95'][1]:.2%} | {real} | {r['int8_bytes']:,} | {r['fp32_bytes']:,} "
                       f"| {r['int8_size_ratio']:.4f} |")
    return "\n".join(out) + "\n"


PART_NAMES = {
    "weights_int8": "int8 weights (initializers: payload + name + dims)",
    "weight_scales": "weight scales (float, per channel or per tensor)",
    "weight_zero_points": "weight zero points (only where a Gemm needs them)",
    "weights_fp32": "float weights (layers kept fp32)",
    "biases": "biases (float)",
    "activation_qparams": "activation Q/DQ scales and zero points",
    "other_initializers": "other initializers (Flatten's shape etc.)",
    "nodes_qdq": "QuantizeLinear / DequantizeLinear nodes",
    "nodes_compute": "compute nodes (Conv, Add, Relu, ...; as in the fp32 file)",
    "rest": "graph shell (inputs, outputs, opset, protobuf framing)",
}


def breakdown_markdown(rows: list[dict]) -> str:
    """One table per file: bytes of each part and that part as a fraction of the fp32 file."""
    out = ["# Where the int8 bytes go (cleaned suite models)", "",
           "Made by `benchmarks/int8_sweep.py --breakdown` (parts from `benchmarks/onnx_bytes.py int8_breakdown`).", ""]
    for r in rows:
        b = r["breakdown"]
        out += [f"## {r['model']} — {r['setting']}", "",
                f"int8 {b['int8_bytes']:,} B / fp32 {b['fp32_bytes']:,} B = **{b['ratio']:.4f}** "
                f"(target 0.27 = {int(0.27 * b['fp32_bytes']):,} B). Agreement on 256 held-out synthetic images "
                f"{r['agreement_synthetic']:.2%}.", "",
                "| part | bytes | / fp32 file |", "|---|---:|---:|"]
        for k, label in PART_NAMES.items():
            out.append(f"| {label} | {b['parts'][k]:,} | {b['parts'][k] / b['fp32_bytes']:.4f} |")
        p, n, c = b["payload"], b["names"], b["counts"]
        out += ["",
                f"Payload inside those parts: int8 weights {p['weights_int8']:,} B, weight scales {p['weight_scales']:,} B "
                f"({c['weight_scale_values']:,} values), biases {p['biases']:,} B, activation qparams "
                f"{p['activation_qparams']:,} B ({c['activation_qparam_initializers']} initializers). Names: initializers "
                f"{n['initializer_names']:,} B, Q/DQ nodes {n['node_names_qdq']:,} B ({c['qdq_nodes']} nodes), compute nodes "
                f"{n['node_names_compute']:,} B ({c['compute_nodes']} nodes).", "",
                f"Floor with no quantisation parameters and no Q/DQ nodes at all (int8 weights + float biases + "
                f"compute nodes + graph shell): **{b['floor_without_qdq']:.4f}** of the fp32 file.", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
