"""After each patch plan, fit the triggers again on the patched teacher: does their new success track the real ASR?

    OMP_NUM_THREADS=1 python benchmarks/explore/refit_triggers.py SUSPECT.pt [...] \\
        --plans none "channels+head" "channels+unlearn" "head" "unlearn" [--n-test 2000] [--nc]  # none: the suspect

``patch_head`` judges a plan by the triggers fitted on the suspect before it (``success_after``). An unlearned teacher
was trained against exactly those triggers, so their held-out success flatters it (``PatchConfig.unlearn_below``);
a pruned one may leave a trigger the old ones no longer find. Per suspect and plan (one plan at a time, the card's
target, 512 cached synthetic images as in ``patch_teacher.py``): the old triggers' success after the patch, the
success of triggers of the same kinds fitted anew on the patched teacher (same fit / held-out split), the best such
success towards two other classes (target + 1 and + 5: what a trigger reaches where no backdoor points), with ``--nc``
the size of Neural Cleanse's smallest mask that sends 90 % of the fit images to the target and to each other class
(``PatchConfig.mask_goal``; a backdoor's target needs a far smaller one, CC_NOTES 21), and the patched teacher's
CA / ASR / target recall / redirect on the first n test images (``Case.real_line``).
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
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, patch_head, reverse_trigger, success_rate  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--plans", nargs="+", default=["none", "channels+head", "channels+unlearn", "head", "unlearn"])
ap.add_argument("--n-test", type=int, default=2000)
ap.add_argument("--nc", action="store_true", help="also Neural Cleanse's smallest-mask search: target, then the others")
args = ap.parse_args()
torch.set_num_threads(1)

for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    target = case.target
    images = case.images(512)
    for plan in args.plans:
        config = replace(PatchConfig(), **overrides(PatchConfig(), [f"plans={plan}"]))
        teacher = copy.deepcopy(case.model).eval()
        net = input_model(teacher, case.spec).eval()
        t0 = time.time()
        res = patch_head(net, teacher, images, target, config) if plan != "none" else None  # "none": the suspect
        fit, check = images[: config.n_reverse], images[config.n_reverse: config.n_reverse + config.n_check]
        refit = {k: round(success_rate(net, check, reverse_trigger(net, fit, target, k, config)), 3)
                 for k in config.kinds}
        # the same kinds towards two other classes: what a trigger reaches where no backdoor points
        others = [(target + d) % case.spec.num_classes for d in (1, 5)]
        base = {k: max(round(success_rate(net, check, reverse_trigger(net, fit, c, k, config)), 3) for c in others)
                for k in config.kinds}
        if args.nc:  # Neural Cleanse's smallest mask reaching 90 % of the fit images, pixels: target / other classes
            nc = replace(config, mask_goal=0.9)
            base["nc_mask_px"] = [round(reverse_trigger(net, fit, c, "mask", nc).size(), 1) for c in [target] + others]
        cand = res.candidates[0] if res is not None and res.candidates else {}
        print(case.path.stem, f"[{plan}]", case.real_line(net),
              f"old triggers after {cand.get('success_after')} unchanged {cand.get('unchanged')}",
              f"moved {cand.get('moved')}",
              f"channels {len(res.channels) if res else 0} units {len(res.units) if res else 0}", "refit held-out", refit,
              f"other classes {others}", base,
              f"{time.time() - t0:.0f}s", flush=True)
