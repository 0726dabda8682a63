"""Where should the channel patch stop? The teacher as more trigger-excited BatchNorm channels are silenced.

    OMP_NUM_THREADS=1 python benchmarks/explore/stop_curve.py SUSPECT.pt [...] [--scan] [--n-test 2000] \\
        [--patch mask_goal=0.9 kinds=mask]

For each suspect: the patch's triggers are fitted as ``unlearn.patch_head`` fits them (the card's target stands in
for the scan's; ``--scan`` runs the scan and adds its stripe grating, as C&C does; ``--patch`` sets PatchConfig fields,
e.g. the trigger kinds and Neural Cleanse's mask search), BN channels are ranked as
``unlearn.excited_channels`` ranks them, and for k = 0 .. 30 % of the channels the first k are silenced. Per k:
- real data (the measurement, never the method): CA, ASR and the target class's recall on the first n test images;
- what the patch can see, data-free: the held-out success of every fitted trigger, and on the 256 synthetic images
  no trigger was fitted or judged on: the target's share of the predictions, its mean softmax, the largest mean
  softmax of any other class, and the share of non-target predictions left unchanged.
"""
import argparse
import copy
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case, overrides  # noqa: E402
from edgeclean.cc import scan_triggers  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import (PatchConfig, excited_channels, named_bn2d, prune_channels, reverse_trigger,  # noqa: E402
                               success_rate)

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--scan", action="store_true", help="add the scan's grating trigger (as C&C does)")
ap.add_argument("--n-test", type=int, default=2000)
ap.add_argument("--patch", nargs="*", default=[], metavar="FIELD=VALUE", help="PatchConfig fields, e.g. kinds=mask")
ap.add_argument("--fractions", default="0,0.025,0.05,0.075,0.1,0.125,0.15,0.175,0.2,0.25,0.3")
args = ap.parse_args()
torch.set_num_threads(1)
cfg = replace(PatchConfig(), **overrides(PatchConfig(), args.patch))

for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    target = case.target
    model = copy.deepcopy(case.model).eval()
    net = input_model(model, case.spec).eval()
    images = case.images(512)
    fit, check, rest = images[:128], images[128:256], images[256:]
    triggers = [reverse_trigger(net, fit, target, kind, cfg) for kind in cfg.kinds]
    if args.scan:
        from edgeclean.scan import scan
        triggers += scan_triggers(scan(case.model, case.spec), case.spec, target)
    held = [success_rate(net, check, t) for t in triggers]
    used = [t for t, s in zip(triggers, held) if s >= cfg.shortcut]
    print(case.path.stem, "target", target, "triggers", [(t.kind, round(s, 3)) for t, s in zip(triggers, held)], flush=True)
    if not used:
        continue
    bns = named_bn2d(model)
    owner = [(n, j) for n, b in bns for j in range(b.num_features)]
    order = excited_channels(net, [b for _, b in bns], check, used).argsort(descending=True).tolist()
    saved = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        base = net(rest).argmax(1)
    for f in map(float, args.fractions.split(",")):
        k = int(round(f * len(owner)))
        model.load_state_dict(saved)
        prune_channels(model, [owner[i] for i in order[:k]])
        with torch.no_grad():
            p = net(rest).softmax(1)
            x, y = case.test.x, case.test.y
            pc = net(x).argmax(1)
        ca, asr = case.ev(model)
        mean = p.mean(0)
        other = torch.cat([mean[:target], mean[target + 1:]])
        pr = p.argmax(1)
        print(f"  k {k:4d} ({f:.3f})  CA {ca:5.1f} ASR {asr:5.1f} recall {float((pc[y == target] == target).float().mean()):.3f}"
              f" | fitted {[round(success_rate(net, check, t), 3) for t in used]}"
              f" target share {float((pr == target).float().mean()):.3f} mean p {float(mean[target]):.3f}"
              f" max other {float(other.max()):.3f} median other {float(other.median()):.3f}"
              f" unchanged {float((pr == base)[base != target].float().mean()):.3f}", flush=True)
