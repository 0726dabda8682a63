"""Per teacher-patch plan: does the real trigger move images to another class, and do the fitted triggers
say so? (CC_NOTES 23)

    OMP_NUM_THREADS=1 python benchmarks/explore/plan_moves.py SUSPECT.pt [...] [--plans channels+head head unlearn]

Teacher only (no compression), card target, the 512 cached synthetic images of ``case.Case.images``. Each plan
alone (``PatchConfig.plans`` of one plan, so it is the candidate ``patch_head`` would weigh). Real, full test
split: CA, ASR, target recall, ``metrics.redirect``. Data-free, on the patch's held-out synthetic images: share
of predictions kept (what ``plan_rank`` uses), and per fitted trigger the share of images whose top-1 the
trigger changes at all ("moved") and to the target.
"""
import argparse
import copy
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, moved_rate, patch_head, success_rate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--plans", nargs="+", default=["channels+head", "head", "unlearn"])
ap.add_argument("--synth-seed", type=int, default=1, help="SynthConfig.seed of the 512 images (C&C at seed s uses s + 1)")
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path, n_test=10000)
    if args.synth_seed == 1:
        images = case.images()
    else:
        from edgeclean.synth import SynthConfig, synthesize
        images = synthesize(case.model, case.spec, 512, SynthConfig(seed=args.synth_seed))
    for plan in args.plans:
        teacher = copy.deepcopy(case.model).eval()
        net = input_model(teacher, case.spec).eval()
        cfg = dataclasses.replace(PatchConfig(), plans=(tuple(plan.split("+")),))
        res = patch_head(net, teacher, images, case.target, cfg)
        fitted = [f"{t.kind} moved {100 * moved_rate(net, res.check, [t]):.1f} "
                  f"to-target {100 * success_rate(net, res.check, t):.1f}" for t in res.used]
        c = res.candidates[0]
        print(f"{case.path.stem} s{args.synth_seed} {plan:14s} ch {c['channels']} units {c['units']} kept {c['unchanged']:.3f} | "
              f"real {case.real_line(net)} | fitted: {'; '.join(fitted)}", flush=True)
