"""Does the post-cleaning scan read the cleaned model's BatchNorm statistics as evidence it no longer is?

    OMP_NUM_THREADS=1 python benchmarks/explore/scan_after_bn.py SUSPECT.pt CLEANED.safetensors [...pairs]

The cleaned (factorised, distilled) model keeps the suspect's BN running statistics (its BN layers stay in eval
mode while it learns), but its convs changed, so the statistics no longer describe its own features. The scan
synthesises its images from those statistics. Per pair: the scan of the suspect (as `run` scans it first), of the
cleaned model as `run` scans it after cleaning, and of a copy whose BN statistics are re-estimated on the suspect's
synthetic images (the before-scan's 128, which C&C also distils on); score, basis and class of each.
"""
import copy
import sys

import torch
from torch import nn

from edgeclean.load import input_model, load_suspect
from edgeclean.scan import ScanConfig, scan


@torch.no_grad()
def bn_reestimated(model: nn.Module, spec, images: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose BN running statistics are the plain averages over ``images`` (raw inputs)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    net = input_model(model, spec).train()
    for i in range(0, len(images), 64):
        net(images[i:i + 64])
    return model.eval()


def line(tag, r):
    return f"{tag} {r.score:.2f} {'SUSPECTED' if r.suspected else 'clean'} ({r.basis}, class {r.target_class})"


def main(paths):
    for suspect_path, cleaned_path in zip(paths[::2], paths[1::2]):
        suspect, spec = load_suspect(suspect_path)
        cleaned, cspec = load_suspect(cleaned_path)
        before = scan(suspect.eval(), spec, ScanConfig(seed=0))
        after = scan(cleaned.eval(), cspec, ScanConfig(seed=0))
        reest = scan(bn_reestimated(cleaned, cspec, torch.as_tensor(before.images)), cspec, ScanConfig(seed=0))
        print(f"{cleaned_path}: {line('before', before)} | {line('after', after)} | "
              f"{line('after, BN re-estimated', reest)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
