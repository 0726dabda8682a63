"""Where (how deep) the teacher patch silences channels, and whether silencing the trigger at its source
(the earliest layers that suffice) keeps the target class and stops the backdoor moving (CC_NOTES 23).

    OMP_NUM_THREADS=1 python benchmarks/explore/patch_depth.py SUSPECT.pt [...] [--variants default early]

Teacher only (no compression), card target, the 512 cached synthetic images of ``case.Case.images``; real
evaluation on the full test split: CA, ASR, target recall and ``metrics.redirect``. Variants of the channel
stage of ``unlearn.patch_head``:
- default: channels ranked by their trigger-excitation z-score over all layers at once;
- early: the same ranking restricted to the first L BN layers, L grown one layer at a time; the first L whose
  channels (at most ``max_channel_fraction`` of all) silence the triggers wins.
"""
import argparse
import copy
import os
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean import unlearn  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, patch_head, prune_until  # noqa: E402

default_stage = unlearn._prune_channels_stage


def early_stage(net, model, bns, images, triggers, config):
    """Channels of the first L BN layers only, smallest L that silences the triggers."""
    owner = [(n, j) for n, b in bns for j in range(b.num_features)]
    layer_of = [i for i, (_, b) in enumerate(bns) for _ in range(b.num_features)]
    score = unlearn.excited_channels(net, [b for _, b in bns], images, triggers)
    saved = {n: (b.weight.detach().clone(), b.bias.detach().clone()) for n, b in bns}
    limit = int(config.max_channel_fraction * len(owner))
    for depth in range(1, len(bns) + 1):
        allowed = torch.tensor([l < depth for l in layer_of])
        order = torch.where(allowed, score, torch.full_like(score, -float("inf"))).argsort(descending=True).tolist()
        order = order[: int(allowed.sum())]

        def prune_first(k, order=order):
            with torch.no_grad():
                for n, b in bns:
                    b.weight.copy_(saved[n][0])
                    b.bias.copy_(saved[n][1])
            unlearn.prune_channels(model, [owner[i] for i in order[:k]])

        k, after = prune_until(net, images, triggers, prune_first, min(limit, len(order)), config.success_below)
        if after < config.success_below or depth == len(bns):
            return [list(owner[i]) for i in order[:k]], after
    raise AssertionError


VARIANTS = {"default": default_stage, "early": early_stage}
# the pruning plans only: this is about where channels are cut (unlearning, a default plan since 23 (c), cuts none;
# the rows in results/explore_patch_depth.txt were measured before it joined the defaults)
PRUNING_PLANS = (("channels", "head"), ("head",))

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path, n_test=10000)
    bn_index = None
    for name in args.variants:
        unlearn._prune_channels_stage = VARIANTS[name]
        teacher = copy.deepcopy(case.model).eval()
        net = input_model(teacher, case.spec).eval()
        if bn_index is None:
            bn_index = {n: i for i, (n, _) in enumerate(unlearn.named_bn2d(teacher))}
        res = patch_head(net, teacher, case.images(), case.target, PatchConfig(plans=PRUNING_PLANS))
        depth = Counter(bn_index[n] for n, _ in res.channels)
        print(f"{case.path.stem} {name:8s} plan {res.plan}: {len(res.channels)} ch by layer "
              f"{dict(sorted(depth.items()))}, {len(res.units)} head; cands "
              f"{[(c['plan'], c['channels'], c['units'], c['success_after'], c['unchanged']) for c in res.candidates]}; "
              f"{case.real_line(net)}", flush=True)
    unlearn._prune_channels_stage = default_stage
