"""Where the teacher patch's CA goes, and alternatives to silencing whole channels (CC_NOTES section 14).

    OMP_NUM_THREADS=1 python benchmarks/explore/patch_alt.py confusion benchmarks/suspects/vgg11_badnets.pt
    OMP_NUM_THREADS=1 python benchmarks/explore/patch_alt.py clamp S.pt [S.pt ...]     # clamp every BN output
    OMP_NUM_THREADS=1 python benchmarks/explore/patch_alt.py cutoff S.pt              # zero only outliers
    OMP_NUM_THREADS=1 python benchmarks/explore/patch_alt.py shift S.pt               # target-logit shift
    OMP_NUM_THREADS=1 python benchmarks/explore/patch_alt.py unlearn S.pt [--steps 300] [--then-patch]

Teacher only (no compression, no distillation), the card's target, the 512 cached synthetic images of
``case.Case.images`` (first 256 to fit / train, last 256 held out), CA / ASR in % on the first 2,000
test images. Every line printed is in benchmarks/results/explore_patch_alt.txt.
"""
import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.finetune import FinetuneConfig, augment, kd_loss  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import (PatchConfig, classifier_head, named_bn2d, patch_head, prune_head_units,  # noqa: E402
                               reverse_trigger, success_rate)


def patched(case, images):
    model = copy.deepcopy(case.model).eval()
    return model, patch_head(input_model(model, case.spec), model, images, case.target, PatchConfig())


def predictions(case, model, x=None):
    """Top-1 of ``model`` on ``x`` (default: the case's test images)."""
    with torch.no_grad():
        return input_model(model, case.spec).eval()(case.test.x if x is None else x).argmax(1)


def confusion(case, images):
    """Per class: recall of the suspect and of the patched teacher; which true classes the patch loses."""
    model, res = patched(case, images)
    a, b, y = predictions(case, case.model), predictions(case, model), case.test.y
    print(case.path.stem, f"plan {res.plan}: {len(res.channels)} channels, {len(res.units)} head inputs;",
          "CA", case.ev(case.model), "->", case.ev(model))
    for k in range(int(y.max()) + 1):
        m = y == k
        print(f"  class {k}{' (target)' if k == case.target else ''}: recall {(a[m] == k).float().mean():.3f} -> "
              f"{(b[m] == k).float().mean():.3f}")
    lost = (a == y) & (b != y)
    print(f"  lost {int(lost.sum())} test images, true class of the target: {int((y[lost] == case.target).sum())}")


def bn_hooks(model, channels, edit):
    """Forward hooks applying ``edit(out, idx, bn)`` to the outputs of the listed (BN name, index) channels."""
    bns, by = dict(named_bn2d(model)), {}
    for name, j in channels:
        by.setdefault(name, []).append(j)
    for name, js in by.items():
        bn, idx = bns[name], torch.tensor(js)
        bn.register_forward_hook(lambda _m, _i, out, bn=bn, idx=idx: edit(out, idx, bn))


def upper(bn, idx, k):
    """beta + k |gamma| for channels ``idx``: the BN output's training mean + k training stds."""
    return (bn.bias + k * bn.weight.abs()).detach()[idx].view(1, -1, 1, 1)


def clamp(case, images, ks=(2.0, 2.5, 3.0)):
    """Clamp every BN output at beta + k |gamma| (data-free, no trigger needed)."""
    line = [case.path.stem, "suspect", case.ev(case.model)]
    every = [(n, j) for n, b in named_bn2d(case.model) for j in range(b.num_features)]
    for k in ks:
        model = copy.deepcopy(case.model).eval()

        def edit(out, idx, bn, k=k):
            out = out.clone()
            out[:, idx] = torch.minimum(out[:, idx], upper(bn, idx, k))
            return out
        bn_hooks(model, every, edit)
        line += [f"k={k}", case.ev(model)]
    print(*line)


def cutoff(case, images, ks=(0.5, 1.0, 1.5, 2.0, 3.0)):
    """The patch's channels zeroed only where they exceed beta + k |gamma| (per element), not everywhere."""
    _, res = patched(case, images)
    for k in ks:
        model = copy.deepcopy(case.model).eval()

        def edit(out, idx, bn, k=k):
            out = out.clone()
            v = out[:, idx]
            out[:, idx] = torch.where(v < upper(bn, idx, k), v, torch.zeros_like(v))
            return out
        bn_hooks(model, res.channels, edit)
        prune_head_units(model, res.units)
        print(case.path.stem, f"cutoff k={k} on the patch's {len(res.channels)} channels", case.ev(model))


def shift(case, images, deltas=(0, 0.5, 1, 1.5, 2, 3, 4)):
    """The patched teacher with delta added to the target's logit (the head bias)."""
    model, _ = patched(case, images)
    head, check = classifier_head(model)[1], images[256:]
    bias = head.bias.detach().clone()
    share = (predictions(case, case.model, check) == case.target).float().mean()
    print(case.path.stem, f"suspect: target share on held-out synthetic {share:.3f}", case.ev(case.model))
    for d in deltas:
        with torch.no_grad():
            head.bias.copy_(bias)
            head.bias[case.target] += d
        share = (predictions(case, model, check) == case.target).float().mean()
        print(f"  delta {d}: target share {share:.3f}", case.ev(model))


def unlearn(case, images, steps=300, lr=1e-4, then_patch=False):
    """Neural-Cleanse unlearning of the teacher itself: fine-tune a copy so that trigger-stamped synthetic
    images get the suspect's answer on the clean image, while it keeps the suspect's answers on clean ones."""
    fit, check, train = images[:128], images[256:], images[:256]
    suspect = input_model(case.model, case.spec).eval()
    for p in suspect.parameters():
        p.requires_grad_(False)
    triggers = [reverse_trigger(suspect, fit, case.target, kind, PatchConfig()) for kind in ("mask", "additive")]
    triggers = [t for t in triggers if success_rate(suspect, check, t) >= 0.5]
    print(case.path.stem, "suspect", case.ev(case.model), "triggers (held-out success)",
          [round(success_rate(suspect, check, t), 2) for t in triggers])
    model = copy.deepcopy(case.model)
    net = input_model(model, case.spec).eval()  # BN statistics stay the suspect's
    for p in model.parameters():
        p.requires_grad_(True)
    opt, gen, cfg = torch.optim.Adam(model.parameters(), lr=lr), torch.Generator().manual_seed(0), FinetuneConfig()
    for step in range(steps):
        x = augment(train[torch.randint(0, len(train), (64,), generator=gen)], cfg, gen)
        with torch.no_grad():
            answer = suspect(x)
        loss = kd_loss(net(x), answer, 4.0) + sum(kd_loss(net(t.apply(x)), answer, 4.0) for t in triggers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"  step {step + 1}", case.ev(model), "triggers", [round(success_rate(net, check, t), 2) for t in triggers])
    if then_patch:
        for p in model.parameters():
            p.requires_grad_(False)
        res = patch_head(net, model, images, case.target, PatchConfig())
        print(f"  then patched ({res.plan}: {len(res.channels)} channels, {len(res.units)} head inputs)", case.ev(model))


ap = argparse.ArgumentParser()
ap.add_argument("what", choices=["confusion", "clamp", "cutoff", "shift", "unlearn"])
ap.add_argument("suspects", nargs="+")
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--then-patch", action="store_true")
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path, n_test=2000)
    imgs = case.images(512)
    if args.what == "unlearn":
        unlearn(case, imgs, args.steps, then_patch=args.then_patch)
    else:
        globals()[args.what](case, imgs)
