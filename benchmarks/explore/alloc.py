"""Rank allocation proxy: HOSVD energy vs measured output divergence (RankConfig.proxy), C&C at 1/8.

    OMP_NUM_THREADS=1 python benchmarks/explore/alloc.py --suspect benchmarks/suspects/vgg11_clean.pt \\
        --proxies energy output [--no-ft] [--nopatch] [--ft FIELD=VALUE ...]

Prints CA / ASR (first 1,000 test images; --n-test) of the student, the ranks chosen and the stage times.
The card's target stands in for the scan's (as in cc1.py); the synthetic images are case.images().
"""
import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case, overrides  # noqa: E402
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.finetune import FinetuneConfig  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.ranks import RankConfig, estimate_bytes  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--suspect", default="benchmarks/suspects/vgg11_clean.pt")
ap.add_argument("--proxies", nargs="+", default=["energy", "output"])
ap.add_argument("--no-ft", action="store_true")
ap.add_argument("--nopatch", action="store_true")
ap.add_argument("--probe", type=int, default=128, help="RankConfig.probe_images")
ap.add_argument("--points", type=int, default=RankConfig().probe_points, help="RankConfig.probe_points")
ap.add_argument("--fraction", type=float, default=1 / 8)
ap.add_argument("--precision", default="fp32", help="artifact precision the budget is for (fp32 or int8)")
ap.add_argument("--steps", type=int, default=None, help="FinetuneConfig.steps (default: its own)")
ap.add_argument("--n", type=int, default=512, help="synthetic images for the distillation")
ap.add_argument("--ft", nargs="*", default=[], metavar="FIELD=VALUE", help="other FinetuneConfig fields, e.g. bn=train lr=3e-3")
ap.add_argument("--plans", default=None, help='PatchConfig.plans, e.g. "channels+head/head/unlearn"')
ap.add_argument("--n-test", type=int, default=1000, help="test images CA / ASR are measured on (first N)")
ap.add_argument("--recall", action="store_true", help="also print the student's recall per class")
ap.add_argument("--cc", nargs="*", default=[], metavar="FIELD=VALUE", help="other CCConfig fields, e.g. n_synthetic=1024")
ap.add_argument("--save", default=None, metavar="DIR", help="save each student as DIR/<suspect>[.<proxy>].safetensors + .json")
ap.add_argument("--synth-iterations", type=int, default=None,
                help="synthesis iterations per batch of the distillation images (default: synth's own)")
ap.add_argument("--patch", nargs="*", default=[], metavar="FIELD=VALUE",
                help="PatchConfig fields, e.g. kinds=mask,additive,blend blend=0.15")
args = ap.parse_args()
ft_over, cc_over = overrides(FinetuneConfig(), args.ft), overrides(CCConfig(), args.cc)
torch.set_num_threads(1)
case = Case(args.suspect, n_test=args.n_test)
scan = SimpleNamespace(suspected=case.target is not None, target_class=case.target,
                       images=case.images(args.n, iterations=args.synth_iterations), adv_images=None)
budget = int(estimate_bytes(case.model) * args.fraction)  # of the fp32 size, at --precision
for proxy in args.proxies:
    cfg = CCConfig(ranks=RankConfig(proxy=proxy, probe_images=args.probe, probe_points=args.points), do_finetune=not args.no_ft)
    if args.nopatch:
        cfg = replace(cfg, patch=None)
    else:
        over = overrides(cfg.patch, args.patch + ([f"plans={args.plans}"] if args.plans else []))
        cfg = replace(cfg, patch=replace(cfg.patch, **over))
    if args.steps:
        cfg = replace(cfg, finetune=replace(cfg.finetune, steps=args.steps))
    cfg = replace(cfg, n_synthetic=args.n, finetune=replace(cfg.finetune, **ft_over), **cc_over)
    t0 = time.time()
    student, rep = clean_and_compact(case.model, case.spec, budget_bytes=budget, precision=args.precision, config=cfg,
                                  scan_result=scan)
    ranks = [tuple(l["ranks"]) if l["ranks"] else None for l in rep.layers]
    print(case.path.stem, proxy, f"steps={cfg.finetune.steps} n={args.n}{'' if args.n_test == 1000 else f' n_test={args.n_test}'} patch={not args.nopatch} {ft_over or ''} plans={args.plans or 'default'} {cc_over or ''} {args.patch or ''}{'' if args.synth_iterations is None else f' synth_iterations={args.synth_iterations}'}", "CA/ASR", case.ev(student), f"{time.time() - t0:.0f}s", rep.timings,
          "ranks", ranks, "patch", rep.patch and {k: rep.patch.get(k) for k in ("plan", "candidates", "success_after", "student_success")}, flush=True)
    if args.save:  # export_suspects.py's format: load_cleaned(DIR/<stem>) rebuilds it
        from export_suspects import save_cleaned
        from edgeclean.load import ModelSpec

        stem = case.path.stem + ("" if len(args.proxies) == 1 else f".{proxy}")
        save_cleaned(student, ModelSpec.from_dict(rep.spec), Path(args.save) / stem, case.card)
    if args.recall:  # per-class recall on the test images: where the CA goes
        with torch.no_grad():
            pred = input_model(student, case.spec).eval()(case.test.x).argmax(1)
        print("  recall per class", [round(float((pred[case.test.y == k] == k).float().mean()), 3)
                                     for k in range(case.spec.num_classes)], "target", case.target, flush=True)
