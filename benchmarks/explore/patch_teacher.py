"""The patched teacher alone (no compression, no distillation) under PatchConfig variants, with the target's recall.

    OMP_NUM_THREADS=1 python benchmarks/explore/patch_teacher.py SUSPECT.pt [...] \\
        --settings "default" "mask_goal=0.9" "mask_goal=0.9 kinds=mask,warp" [--scan] [--n-test 2000]

Per suspect and setting: ``unlearn.patch_head`` on the 512 cached synthetic images (``case.Case.images``), the card's
target standing in for the scan's (``--scan`` runs the scan once and adds its stripe grating, as C&C does); CA, ASR and
the target class's recall of the patched teacher on the first n test images, what was pruned, the triggers, the time.
"""
import argparse
import copy
import os
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case, overrides  # noqa: E402
from edgeclean.cc import scan_triggers  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, patch_head  # noqa: E402


def patch_config(setting: str) -> PatchConfig:
    """'FIELD=VALUE ...' over PatchConfig() ("default": none)."""
    return replace(PatchConfig(), **overrides(PatchConfig(), [p for p in setting.split() if p != "default"]))


ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--settings", nargs="+", default=["default"])
ap.add_argument("--scan", action="store_true")
ap.add_argument("--n-test", type=int, default=2000)
args = ap.parse_args()
torch.set_num_threads(1)

for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    known = []
    if args.scan:
        from edgeclean.scan import scan
        known = scan_triggers(scan(case.model, case.spec), case.spec, case.target)
    x, y, target = case.test.x, case.test.y, case.target
    for setting in args.settings:
        teacher = copy.deepcopy(case.model).eval()
        net = input_model(teacher, case.spec).eval()
        t0 = time.time()
        res = patch_head(net, teacher, case.images(512), target, patch_config(setting), known=known)
        dt = time.time() - t0
        with torch.no_grad():
            pc = net(x).argmax(1)
        recall = float((pc[y == target] == target).float().mean())
        print(case.path.stem, f"[{setting}]", "CA/ASR", case.ev(teacher), f"recall {recall:.3f}", f"plan {res.plan}",
              f"channels {len(res.channels)} units {len(res.units)}", "candidates", res.candidates,
              "triggers", [(t["kind"], t["size"], t["success_held_out"], t["used"]) for t in res.triggers],
              f"{dt:.0f}s", flush=True)
