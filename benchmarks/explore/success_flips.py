"""explore/alloc.py with the patch's trigger success measured as flips: the share of the images the net does NOT
already put in the target that the trigger sends there (ASR's definition on synthetic images), instead of the share
of all images the triggered net puts in the target (``unlearn.success_rate``), which also counts images already
there. That count keeps a plan that leaves the target class intact (unlearning) above its bound (CC_NOTES 24 (c)).

    OMP_NUM_THREADS=1 python benchmarks/explore/success_flips.py --suspect S --proxies output --n-test 10000 ...
"""
import os
import runpy
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean import unlearn  # noqa: E402


@torch.no_grad()
def flips_to_target(net, images, trigger):
    keep = net(images).argmax(1) != trigger.target
    if not keep.any():
        return 0.0
    return float((net(trigger.apply(images[keep])).argmax(1) == trigger.target).float().mean())


if __name__ == "__main__":
    unlearn.success_rate = flips_to_target  # every call inside unlearn.py looks the name up at call time
    import edgeclean.cc

    edgeclean.cc.success_rate = flips_to_target  # the student's success in the report
    sys.argv[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alloc.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
