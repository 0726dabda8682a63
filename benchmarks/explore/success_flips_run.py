"""The patch on the images `edgeclean run` would use (the scan's, seed 0, topped up as C&C does), default plans, with
the triggers' success counted as ``unlearn.success_rate`` does and as flips to the target among held-out images not
already there (``explore/success_flips.py``); for each, the plans' candidates and the patched teacher against
the real trigger on the first 2,000 test images (CC_NOTES 24 (c)).

    OMP_NUM_THREADS=1 python benchmarks/explore/success_flips_run.py SUSPECT.pt
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case import Case  # noqa: E402
from edgeclean import unlearn  # noqa: E402
from edgeclean.cc import CCConfig, scan_triggers, synthetic_data  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.scan import ScanConfig, scan  # noqa: E402
from success_flips import flips_to_target  # noqa: E402

torch.set_num_threads(1)
case = Case(sys.argv[1], n_test=2000)
sr = scan(case.model, case.spec, ScanConfig(seed=0))
images, *_ = synthetic_data(case.model.eval(), case.spec, 512, CCConfig(), sr)
print(sys.argv[1], "scan target", sr.target_class, flush=True)
for label, measure in (("success_rate", unlearn.success_rate), ("flips", flips_to_target)):
    original, unlearn.success_rate = unlearn.success_rate, measure
    try:
        teacher = copy.deepcopy(case.model).eval()
        net = input_model(teacher, case.spec)
        res = unlearn.patch_head(net, teacher, images, sr.target_class, unlearn.PatchConfig(),
                                 known=scan_triggers(sr, case.spec, sr.target_class))
    finally:
        unlearn.success_rate = original
    print(label, "plan", res.plan, res.candidates, "|", case.real_line(net.eval()), flush=True)
