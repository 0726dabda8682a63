"""Do the patch's own (reverse-engineered) triggers show where the real backdoor moves to? Data-free check vs real.

    OMP_NUM_THREADS=1 python benchmarks/explore/fitted_redirect.py SUSPECT.pt [...]

Per suspect (card target standing in for the scan's; the scan's grating is not among the triggers here): patch a copy
(``unlearn.patch_head``, default ``PatchConfig``) as C&C does before compressing, then
- data-free: each trigger the patch used, stamped on its held-out synthetic images, on the patched teacher: the share
  it still sends to the target, and ``metrics.redirect`` with the teacher's own untriggered predictions standing in
  for labels (the class the trigger now pushes images to);
- real (evaluation only): the patched teacher on the triggered test set: ASR and redirect.
CC_NOTES 22 (h).
"""
import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.metrics import evaluate, redirect  # noqa: E402
from edgeclean.unlearn import PatchConfig, patch_head  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path, n_test=10000)
    teacher = copy.deepcopy(case.model).eval()
    net = input_model(teacher, case.spec).eval()
    patched = patch_head(net, teacher, case.images(), case.target, PatchConfig())
    real = evaluate(net, case.test, case.attack, case.target, case.params)
    rd = real["redirect"]
    print(case.path.stem, f"target {case.target}, plan {patched.to_dict().get('plan')}: real CA {100 * real['ca']:.1f} "
          f"ASR {100 * real['asr']:.1f} redirect class {rd['class']} {100 * rd['rate']:.1f} % ({100 * rd['clean_rate']:.1f} %)")
    with torch.no_grad():
        clean = net(patched.check).argmax(1).numpy()
        for t in patched.used:
            trig = net(t.apply(patched.check)).argmax(1).numpy()
            r = redirect(trig, clean, clean, case.target)
            print(f"  fitted {t.kind:8s} to target {100 * (trig == case.target).mean():.1f} %, "
                  f"redirect class {r['class']} {100 * r['rate']:.1f} %", flush=True)
