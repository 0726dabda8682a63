"""How far a reverse-engineered warp trigger (``unlearn`` kind "warp") reaches, per suspect and class.

    OMP_NUM_THREADS=1 python benchmarks/explore/warp_reach.py [--px 1.0] [--others 0 3] SUSPECT.pt ...

For each suspect: the warp fitted on 128 cached synthetic images (``Case.images``) towards the card's
target and towards ``--others`` classes, its success on those images and on 128 held-out ones, and its
largest displacement in pixels. A warp counts in the patch only when its held-out success reaches
``PatchConfig.shortcut`` (0.5) for the scan's target. For WaNet suspects the real warp's size is printed too.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.attacks import wanet_grid  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, grid_units_per_px, identity_grid, reverse_trigger, success_rate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--px", type=float, default=PatchConfig().warp_px, help="PatchConfig.warp_px")
ap.add_argument("--others", type=int, nargs="*", default=[], help="non-target classes to fit a warp for too")
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path)
    net = input_model(case.model, case.spec).eval()
    images = case.images(512)
    fit, check = images[:128], images[128:256]
    classes = ([case.target] if case.target is not None else []) + [c for c in args.others if c != case.target]
    for c in classes:
        t0 = time.time()
        trig = reverse_trigger(net, fit, c, "warp", PatchConfig(warp_px=args.px))
        print(case.path.stem, "target" if c == case.target else "other", c, "px", args.px, "fit", round(trig.success, 3),
              "held", round(success_rate(net, check, trig), 3), "size px", round(trig.size(), 2),
              f"{time.time() - t0:.0f}s", flush=True)
    if case.attack == "wanet":
        h, w = case.spec.input_shape[1:]
        shift = (wanet_grid(h, w, case.params) - identity_grid(h, w)) / grid_units_per_px(h, w)
        print(f"  {case.path.stem}: the real warp moves pixels by at most {float(shift.abs().max()):.2f} px "
              f"(mean {float(shift.abs().mean()):.2f})", flush=True)
