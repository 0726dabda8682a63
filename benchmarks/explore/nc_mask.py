"""Neural Cleanse's smallest mask per class (``PatchConfig.mask_goal``): is it specific to the backdoor's target?

    OMP_NUM_THREADS=1 python benchmarks/explore/nc_mask.py SUSPECT.pt [...] [--goal 0.9] [--steps 400] [--n-fit 128]

Per suspect and class: the mask + pattern ``unlearn.reverse_trigger`` finds with Neural Cleanse's adaptive L1 weight
on the first n_fit cached synthetic images (``Case.images``), its size in pixels and its success on 128 held-out
synthetic images; then Neural Cleanse's anomaly index of the smallest class, (median - min) / (1.4826 MAD).
Compare the fixed-weight mask (``mask_goal=None``): 0.83-0.96 of held-out images for every class (CC_NOTES 17a).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, reverse_trigger, success_rate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--goal", type=float, default=0.9)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--n-fit", type=int, default=128)
args = ap.parse_args()
torch.set_num_threads(1)
cfg = PatchConfig(mask_goal=args.goal, mask_steps=args.steps)
for path in args.suspects:
    case = Case(path, n_test=100)
    net = input_model(case.model, case.spec).eval()
    images = case.images(512)
    fit, check = images[:args.n_fit], images[128:256]
    t0 = time.time()
    trigs = [reverse_trigger(net, fit, c, "mask", cfg) for c in range(case.spec.num_classes)]
    sizes = torch.tensor([t.size() for t in trigs])
    med = sizes.quantile(0.5)  # the usual median (torch's median() takes the lower middle value)
    low = int(sizes.argmin())
    anomaly = float((med - sizes[low]) / (1.4826 * (sizes - med).abs().quantile(0.5)))
    print(case.path.stem, "target", case.target, "sizes/held",
          [(round(t.size(), 1), round(success_rate(net, check, t), 2)) for t in trigs],
          "smallest", low, f"anomaly {anomaly:.2f}", f"{time.time() - t0:.0f}s", flush=True)
