"""What the patch's trigger success counts on the images `edgeclean run` would use (the scan's, seed 0, topped up as
C&C does): for the unlearning plan and the channels+head plan alone, the patched teacher's share of held-out images
already in the target class, and per trigger the success as ``unlearn.success_rate`` counts it (all images the
triggered net puts in the target) against the flips to the target among the images not already there
(``explore/success_flips.py``; CC_NOTES 24 (c)).

    OMP_NUM_THREADS=1 python benchmarks/explore/success_split.py SUSPECT.pt
"""
import copy
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edgeclean import unlearn  # noqa: E402
from edgeclean.cc import CCConfig, scan_triggers, synthetic_data  # noqa: E402
from edgeclean.load import input_model, load_suspect  # noqa: E402
from edgeclean.scan import ScanConfig, scan  # noqa: E402
from success_flips import flips_to_target  # noqa: E402

torch.set_num_threads(1)
model, spec = load_suspect(sys.argv[1])
sr = scan(model, spec, ScanConfig(seed=0))
images, *_ = synthetic_data(model.eval(), spec, 512, CCConfig(), sr)
target = sr.target_class
print(sys.argv[1], "scan target", target, flush=True)
for plans in [(("unlearn",),), (("channels", "head"),)]:
    teacher = copy.deepcopy(model).eval()
    net = input_model(teacher, spec)
    res = unlearn.patch_head(net, teacher, images, target, dataclasses.replace(unlearn.PatchConfig(), plans=plans),
                             known=scan_triggers(sr, spec, target))
    with torch.no_grad():
        share = float((net(res.check).argmax(1) == target).float().mean())
    print(plans, res.candidates, "clean target share", round(share, 3))
    for t in res.used:
        print("  ", t.kind, "old success", round(unlearn.success_rate(net, res.check, t), 3),
              "flip-to-target among non-target", round(flips_to_target(net, res.check, t), 3), flush=True)
