"""Calibrate the scan threshold on the harness suite: clean vs backdoored suspects.

    /work/venv/bin/python benchmarks/calibrate_scan.py                       # default ScanConfig
    /work/venv/bin/python benchmarks/calibrate_scan.py --eps 0.05 --steps 5  # another probe
    /work/venv/bin/python benchmarks/calibrate_scan.py benchmarks/suspects/*.pt models/demo_badnets_resnet18.pt \
        --threads 1 --seed S --out benchmarks/results/scan_calibration_seedS.json     # S = 0, 1, 2
    /work/venv/bin/python benchmarks/calibrate_scan.py benchmarks/suspects/compressed/*.pt \
        --threads 1 --seed S --out benchmarks/results/scan_calibration_compressed_seedS.json
      (the compressed models come from benchmarks/scan_compressed.py)
    /work/venv/bin/python benchmarks/calibrate_scan.py --from-json FILE   # re-judge stored evidence

Scans every ``benchmarks/suspects/*.pt`` that has a card (and any extra paths given), prints
(model, attack, true target, predicted target, score, verdict) and the threshold that separates the
clean models from the backdoored ones, with its margin. The cards say the truth; the scan never
reads them except for the spec (input shape and normalisation).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from case import carded
from edgeclean.probe import PatchProbeConfig
from edgeclean.scan import DEFAULT_THRESHOLD, ScanConfig, scan

ROOT = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*", help="checkpoints (default: benchmarks/suspects/*.pt)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--norm", default=None)
    ap.add_argument("--eps", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uap-steps", type=int, default=None, help="universal perturbation steps")
    ap.add_argument("--no-trigger", action="store_true", help="skip the trigger reverse-engineering probe")
    ap.add_argument("--no-grating", action="store_true", help="skip the grating probe")
    ap.add_argument("--patch-steps", type=int, default=None,
                    help="add the small-patch probe (reported, not in the verdict) with this many steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a loaded machine)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--from-json", default=None, help="re-judge the rows of an earlier --out (no scanning)")
    ap.add_argument("--threshold", type=float, default=None, help=f"default {DEFAULT_THRESHOLD}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.paths] or sorted((ROOT / "suspects").glob("*.pt"))
    cfg = ScanConfig(seed=args.seed)
    if args.threshold is not None:
        cfg.threshold = args.threshold
    if args.no_trigger:
        cfg.trigger = None
    if args.no_grating:
        cfg.grating = None
    if args.patch_steps:
        cfg.patch = PatchProbeConfig(steps=args.patch_steps)
    if args.n:
        cfg.n = args.n
    if args.iterations:
        cfg.synth = replace(cfg.synth, iterations=args.iterations)
    if args.uap_steps:
        cfg.universal = replace(cfg.universal, steps=args.uap_steps)
    cfg.probe = replace(cfg.probe, **{k: v for k, v in (("norm", args.norm), ("eps", args.eps), ("steps", args.steps))
                                      if v is not None})
    print(f"config: n={cfg.n} synth_iters={cfg.synth.iterations} probe={cfg.probe.norm} eps={cfg.probe.eps} "
          f"steps={cfg.probe.steps} seed={cfg.seed}; load avg {os.getloadavg()[0]:.1f}")
    rows = []
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["rows"]
        cfg.n = saved.get("config", {}).get("n") or cfg.n
        from edgeclean.scan import combine, grating_gap

        for r in rows:  # re-judge the stored evidence with the current verdict rule (same pure function)
            if r.get("softmax_ratio") is not None and not r.get("inconclusive"):
                gap = (r.get("universal_target"), r.get("universal_gap")) if r.get("universal_gap") is not None else None
                grat = None
                if r.get("grating_shares") is not None:  # recomputed: the gap's rule may have changed
                    grat = grating_gap(r["grating_shares"], r.get("grating_median"))
                    r["grating_target"], r["grating_gap"] = grat
                r["predicted_target"], r["score"], r["basis"] = combine((r["softmax_target"], r["softmax_ratio"]), gap,
                                                                         cfg.threshold, grating=grat)
            r["suspected"] = r["score"] > cfg.threshold and not r.get("inconclusive")
        paths = []
    for path, card, model, spec in carded(paths):
        t = time.perf_counter()
        r = scan(model, spec, cfg)
        attack = card.get("attack", "none")
        row = {"model": path.stem, "arch": spec.arch, "attack": attack, "true_target": card.get("target"),
               "clean_label": bool(card.get("clean_label")),
               "ca": card.get("ca"), "asr": card.get("asr"), "predicted_target": r.target_class,
               "score": round(r.score, 3), "suspected": r.suspected, "seconds": round(time.perf_counter() - t, 1),
               "bn_loss_end": r.synthesis["bn_loss_end"], "prediction_spread": r.synthesis["prediction_spread"],
               "flip_rate": r.flip_rate, "flip_index": round(r.flip_index, 3), "flip_target": r.flip_target,
               "concentration": round(r.concentration, 3), "concentration_target": r.concentration_target,
               "trigger_index": r.trigger_index and round(r.trigger_index, 3), "trigger_target": r.trigger_target,
               "basis": r.basis, "softmax_ratio": r.softmax_ratio, "softmax_target": r.softmax_target,
               "universal_gap": r.universal_gap, "universal_target": r.universal_target,
               "universal_success": r.universal_success, "inconclusive": r.inconclusive,
               "grating_gap": r.grating_gap, "grating_target": r.grating_target, "grating_shares": r.grating_shares,
               "grating_pattern": r.grating_pattern, "grating_median": r.grating_median,
               "patch_gap": r.patch_gap, "patch_target": r.patch_target, "patch_shares": r.patch_shares,
               "timings": r.timings, "load": round(os.getloadavg()[0], 1),
               "trigger_mask_l1": r.trigger_mask_l1, "trigger_success": r.trigger_success, "clean_histogram": r.clean_histogram, "flip_histogram": r.flip_histogram}
        rows.append(row)
        print(f"{row['model']:<22} {attack:<8} true {str(row['true_target']):>4}  pred {str(r.target_class):>4}  "
              f"score {r.score:6.2f}  {'SUSPECTED' if r.suspected else 'clean    '}  [{r.basis[:24]}] ratio {r.softmax_ratio:.2f}->{r.softmax_target} "
              f"gap {r.universal_gap}->{r.universal_target}  grating {r.grating_gap}->{r.grating_target}  "
              f"patch {r.patch_gap}->{r.patch_target}  flip {r.flip_index:5.2f}->{r.flip_target} "
              f"trigger {row['trigger_index']}->{r.trigger_target}  conc {r.concentration:.2f}->{r.concentration_target}  spread {row['prediction_spread']:.2f}  "
              f"flips {r.flip_histogram}  clean {r.clean_histogram}  {row['seconds']}s", flush=True)
    if not rows:
        print("no suspects with cards found")
        return
    bad = [r for r in rows if r["attack"] != "none"]
    good = [r for r in rows if r["attack"] == "none"]
    print()
    print(f"{'model':<22} {'attack':<8} {'true':>4} {'pred':>4} {'score':>7}  verdict")
    for r in sorted(rows, key=lambda r: r["score"]):
        ok = (r["suspected"] and r["predicted_target"] == r["true_target"]) if r["attack"] != "none" else not r["suspected"]
        print(f"{r['model']:<22} {r['attack']:<8} {str(r['true_target']):>4} {str(r['predicted_target']):>4} "
              f"{r['score']:7.2f}  {'suspected' if r['suspected'] else 'clean'}{'' if ok else '  <-- WRONG'}")
    dirty = [r for r in bad if not r.get("clean_label", r["attack"] == "sig")]
    if len(dirty) < len(bad):
        lo = max((r["score"] for r in good), default=float("-inf"))
        hi = min((r["score"] for r in dirty), default=float("inf"))
        print(f"\ndirty-label backdoors only ({len(dirty)}; clean-label ones leave no extra target labels in the "
              f"BN statistics): min score {hi:.2f} vs clean max {lo:.2f}: "
              + (f"separable, margin {hi - lo:.2f}; threshold {cfg.threshold} sits {hi - cfg.threshold:.2f} below the "
                 f"lowest backdoor and {cfg.threshold - lo:.2f} above the highest clean model" if lo < hi else "NOT separable"))
    lo = max((r["score"] for r in good), default=float("-inf"))
    hi = min((r["score"] for r in bad), default=float("inf"))
    right_target = sum(r["predicted_target"] == r["true_target"] for r in bad)
    print(f"\nclean models: max score {lo:.2f}; backdoored: min score {hi:.2f}; "
          f"target class right on {right_target}/{len(bad)} backdoored")
    if lo < hi:
        mid = (lo + hi) / 2 if good and bad else None
        print(f"separable: any threshold in ({lo:.2f}, {hi:.2f}) works; midpoint {mid}; margin {hi - lo:.2f} "
              f"(threshold used {cfg.threshold})")
    else:
        print(f"NOT separable: clean max {lo:.2f} >= backdoored min {hi:.2f} (threshold used {cfg.threshold})")
    # What sampling noise alone does: a perfectly even clean model, n images over K classes.
    import numpy as np

    k = len(rows[0]["clean_histogram"])
    counts = np.random.default_rng(0).multinomial(cfg.n, [1 / k] * k, size=100000).max(1)
    z = (counts - cfg.n / k) / np.sqrt(cfg.n * (1 / k) * (1 - 1 / k))
    print(f"sampling noise of the count z-score (evidence, not the verdict): an evenly spread clean model (n={cfg.n}, K={k}) scores above {cfg.threshold} "
          f"with probability {float((z > cfg.threshold).mean()):.3f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        meta = {**vars(args), "n": cfg.n, "universal": vars(cfg.universal) if cfg.universal else None,
                "grating": vars(cfg.grating) if cfg.grating else None, "grating_threshold": cfg.grating_threshold,
                "patch": vars(cfg.patch) if cfg.patch else None, "iterations": cfg.synth.iterations, "norm": cfg.probe.norm,
                "eps": cfg.probe.eps, "steps": cfg.probe.steps, "threshold": cfg.threshold}
        tmp.write_text(json.dumps({"config": meta, "rows": rows}, indent=2) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
