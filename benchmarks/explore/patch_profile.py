"""Where the teacher patch's time goes on one suspect: trigger fitting, each stage kind, over all candidate plans.

    python benchmarks/explore/patch_profile.py R18.pt [--threads 2]

As C&C runs it (``cc_time.py``'s path): the scan at its defaults, the 512 synthetic images C&C distils on, the scan's
grating as a known trigger, ``PatchConfig()``. The stage functions of ``edgeclean.unlearn`` are wrapped with timers
(seconds and calls). CC_NOTES 31 (a): on the full-width BadNets suspect, trigger fitting and the two unlearning stages
that did not silence took 140 of the 142 s.
"""
import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import edgeclean.unlearn as unlearn  # noqa: E402
from edgeclean.cc import CCConfig, scan_triggers, synthetic_data  # noqa: E402
from edgeclean.load import input_model, load_suspect  # noqa: E402
from edgeclean.scan import ScanConfig, scan  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspect")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
model, spec = load_suspect(args.suspect)
result = scan(model, spec, ScanConfig())
images, _, _, _ = synthetic_data(model, spec, CCConfig().n_synthetic, CCConfig(), result)
seconds, calls = {}, {}


def timed(name, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            calls[name] = calls.get(name, 0) + 1
    return wrapper


for name in ("reverse_trigger", "_prune_channels_stage", "_prune_head_stage", "unlearn_stage", "moved_rate"):
    setattr(unlearn, name, timed(name, getattr(unlearn, name)))
teacher = copy.deepcopy(model).eval()
t0 = time.perf_counter()
patched = unlearn.patch_head(input_model(teacher, spec), teacher, images, result.target_class, unlearn.PatchConfig(),
                             known=scan_triggers(result, spec, result.target_class))
print(f"{args.suspect}: patch {time.perf_counter() - t0:.1f} s, {args.threads} threads, plan {patched.plan}")
for name in seconds:
    print(f"  {name:22s} {seconds[name]:7.1f} s in {calls[name]} calls")
print("  candidates", [(c["plan"], c["ran"], c["success_after"]) for c in patched.candidates])
