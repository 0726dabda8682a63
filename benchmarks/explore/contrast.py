"""Does ranking the patch's BN channels by how much MORE a trigger raises them than the target class's own
images do keep the target class? Teacher only (no compression, no distillation).

    OMP_NUM_THREADS=1 python benchmarks/explore/contrast.py benchmarks/suspects/vgg11_badnets.pt [...]

The patch ranks channels by ``unlearn.excited_channels``: the largest rise of a channel's mean when a
trigger is stamped on. Channels the target class itself drives rise too and are cut with the trigger
(CC_NOTES 14). Here the rise of the held-out synthetic images the suspect puts in the target (without any
trigger) is subtracted first. For each suspect: the card's target, the 512 cached synthetic images of
``case.Case.images``, default vs contrast ranking (the two pruning plans; unlearning ranks no channels); CA, ASR, the target's recall and redirect of the patched
teacher on the first 2,000 test images.
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean import unlearn  # noqa: E402
from edgeclean.load import input_model  # noqa: E402

DEFAULT = unlearn.excited_channels
CONFIG = unlearn.PatchConfig(plans=(("channels", "head"), ("head",)))  # unlearning ranks no channels


class OwnImages:
    """A stand-in trigger whose "stamped" images are the target's own (``excited_channels`` then gives their rise)."""

    def __init__(self, own):
        self.own = own

    def apply(self, _x):
        return self.own


@torch.no_grad()
def contrast_channels(net, bns, images, triggers):
    rise = DEFAULT(net, bns, images, triggers)
    own = images[net(images).argmax(1) == triggers[0].target]
    print(f"    contrast: {len(own)} of {len(images)} held-out images in the target", flush=True)
    if len(own) < 4:
        return rise
    return rise - DEFAULT(net, bns, images, [OwnImages(own)])


def main(paths):
    for path in paths:
        case = Case(path, n_test=2000)
        images = case.images()
        print(case.path.stem, "suspect", case.real_line(input_model(case.model, case.spec).eval()), flush=True)
        for name, fn in (("default", DEFAULT), ("contrast", contrast_channels)):
            unlearn.excited_channels = fn
            model = copy.deepcopy(case.model).eval()
            net = input_model(model, case.spec)
            res = unlearn.patch_head(net, model, images, case.target, CONFIG)
            print(f"  {name:8s} plan {res.plan} {len(res.channels)} ch {len(res.units)} units "
                  f"after {res.success_after} | {case.real_line(net.eval())} | "
                  + " ".join(f"{c['plan']}:{c['channels']}/{c['units']}/{c['success_after']}/{c['unchanged']}"
                             for c in res.candidates), flush=True)
        unlearn.excited_channels = DEFAULT


if __name__ == "__main__":
    main(sys.argv[1:])
