"""Where the channels alone silence the triggers, does unlearning after them still help the moved backdoor?

    OMP_NUM_THREADS=1 python benchmarks/explore/unlearn_after_silence.py SUSPECT.pt [...] [--n-test 2000] [--steps 100 300]

On VGG-11 BadNets / blended the channels stage silences the fitted triggers alone, so no unlearn stage runs, and the
real trigger then sends 40-60 % of its images to another class (R-Acc 41-48 %, CC_NOTES 29-30). Unlearning pulls
triggered images to their clean answer, not merely away from the target (CC_NOTES 23). Per suspect: the channels plan
alone (``patch_head``, plans=channels, the 512 cached synthetic images as in ``patch_teacher.py``), then on that
teacher ``unlearn_stage`` with the channels kept silenced for each number of steps (no early stop: ``unlearn_below``
0, one check at the end); the old triggers' held-out success, ``moved_rate``, the held-out predictions unchanged, and
``Case.real_line`` (CA, ASR, target recall, redirect on the first n test images).
"""
import argparse
import copy
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, moved_rate, success_rate, unlearn_stage  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--steps", type=int, nargs="+", default=[100, 300])
ap.add_argument("--n-test", type=int, default=2000)
args = ap.parse_args()
torch.set_num_threads(1)

for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    config = replace(PatchConfig(), plans=(("channels",),))
    patched = case.patched(config)
    teacher, net, res = patched.teacher, patched.net, patched.result
    check, triggers = res.check, res.used

    def line(what: str, n) -> None:
        with torch.no_grad():
            after = max(success_rate(n, check, t) for t in triggers)
        print(case.path.stem, what, f"success {after:.3f} moved {moved_rate(n, check, triggers):.3f} unchanged "
              f"{patched.unchanged(n):.3f}", case.real_line(n), flush=True)

    print(case.path.stem, "plan", res.plan, "channels", len(res.channels), "triggers",
          [(t["kind"], t["success_held_out"], t["used"]) for t in res.triggers], flush=True)
    line("channels alone", net)
    for steps in args.steps:
        student = copy.deepcopy(teacher)
        snet = input_model(student, case.spec).eval()
        cfg = replace(config, unlearn_below=0.0, unlearn_steps=steps, unlearn_check=steps)
        unlearn_stage(snet, student, patched.train, check, triggers, cfg, keep_silenced=res.channels)
        line(f"channels, then unlearn {steps} steps", snet)
