"""Is a backdoor left after cleaning? Re-fit triggers for EVERY class on the cleaned model and see
whether the suspect's target still stands out (Neural Cleanse's per-class comparison, data-free).

    OMP_NUM_THREADS=1 python benchmarks/explore/residual.py SUSPECT.pt [--cleaned DIR/cleaned.safetensors]

Without ``--cleaned`` the suspect is cleaned here (C&C at 1/8 of its size, defaults). Prints CA / ASR
(first 1,000 test images) and, per class, the held-out success of a reverse-engineered additive and
mask trigger (``unlearn.reverse_trigger``, the patch's own settings) on the suspect and on the cleaned
model; fitted on 128 synthetic images of the suspect, measured on 128 others. Every line printed is in
benchmarks/results/explore_residual.txt (CC_NOTES section 17: not adopted as a gate).
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.load import input_model, load_suspect  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from edgeclean.unlearn import PatchConfig, reverse_trigger, success_rate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspect")
ap.add_argument("--cleaned", default=None)
ap.add_argument("--kinds", default="additive,mask")
args = ap.parse_args()
torch.set_num_threads(1)

case = Case(args.suspect)
images = case.images(512)
fit, check = images[:128], images[128:256]
if args.cleaned:
    cleaned, _ = load_suspect(args.cleaned)
else:
    scan = SimpleNamespace(suspected=case.target is not None, target_class=case.target, images=images, adv_images=None)
    cleaned, _ = clean_and_compact(case.model, case.spec, budget_bytes=int(estimate_bytes(case.model) / 8),
                                   config=CCConfig(), scan_result=scan)
cfg = PatchConfig()
print(case.path.stem, "target", case.target, "CA/ASR suspect", case.ev(case.model), "cleaned", case.ev(cleaned), flush=True)
for name, model in (("suspect", case.model), ("cleaned", cleaned)):
    net = input_model(model, case.spec).eval()
    for kind in args.kinds.split(","):
        t0 = time.time()
        held = [success_rate(net, check, reverse_trigger(net, fit, c, kind, cfg)) for c in range(case.spec.num_classes)]
        order = sorted(held, reverse=True)
        print(f"  {name:8s} {kind:8s}", " ".join(f"{h:.2f}" for h in held),
              f"| target {held[case.target] if case.target is not None else float('nan'):.2f}"
              f" top-runner-up {order[0] - order[1]:.2f} median {order[len(order) // 2]:.2f} ({time.time() - t0:.0f}s)",
              flush=True)
