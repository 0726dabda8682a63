"""Unlearning in rounds: after channels+unlearn, fit the triggers again on the patched teacher and unlearn those too.

    OMP_NUM_THREADS=1 python benchmarks/explore/unlearn_rounds.py SUSPECT.pt [...] [--rounds 2] [--below 0.2] [--n-test 2000]

Section 30 (h)'s looser bound for channels+unlearn (``channels_unlearn_below`` 0.2) keeps the target class, but on
vgg11_wanet the patched teacher still lets 5-7 % of the real warp through (CC_NOTES 31 (c)): unlearning stops where
the triggers fitted on the suspect no longer improve, and those are not the real warp. Each round here fits fresh
triggers of every kind towards the target on the patched teacher (the same fit / held-out split as the patch), then
runs ``unlearn_stage`` against the old and the fresh ones together, the channels kept silenced. Per round: the fresh
triggers' held-out success before and after, the predictions unchanged on the held-out images, and
``Case.real_line`` (CA, ASR, target recall, redirect on the first n test images). Teacher only, the 512 cached
synthetic images as in ``patch_teacher.py``.
"""
import argparse
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.unlearn import PatchConfig, reverse_trigger, success_rate, unlearn_stage  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--below", type=float, default=0.2, help="PatchConfig.channels_unlearn_below for the first patch")
ap.add_argument("--n-test", type=int, default=2000)
args = ap.parse_args()
torch.set_num_threads(1)

for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    config = replace(PatchConfig(), plans=(("channels", "unlearn"),), channels_unlearn_below=args.below)
    patched = case.patched(config)
    teacher, net, res, fit, check = patched.teacher, patched.net, patched.result, patched.fit, patched.result.check
    print(case.path.stem, "round 0: plan", res.plan, "channels", len(res.channels), "success after",
          res.success_after, f"unchanged {patched.unchanged(net):.3f}", case.real_line(net), flush=True)
    triggers = list(res.used)
    for r in range(1, args.rounds + 1):
        fresh = [reverse_trigger(net, fit, case.target, kind, config) for kind in config.kinds]
        with torch.no_grad():
            before = [round(success_rate(net, check, t), 3) for t in fresh]
        triggers += fresh
        after = unlearn_stage(net, teacher, patched.train, check, triggers, config, keep_silenced=res.channels)
        with torch.no_grad():
            fresh_after = [round(success_rate(net, check, t), 3) for t in fresh]
        print(case.path.stem, f"round {r}: fresh triggers {list(zip(config.kinds, before))} -> {fresh_after}, "
              f"all triggers after {after:.3f}, unchanged {patched.unchanged(net):.3f}", case.real_line(net), flush=True)
