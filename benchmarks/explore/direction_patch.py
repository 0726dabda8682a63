"""CC_NOTES 29 (c): silence the fitted triggers by ablating one direction per BatchNorm layer, not whole channels.

    OMP_NUM_THREADS=1 python benchmarks/explore/direction_patch.py benchmarks/suspects/vgg11_badnets.pt [...]

Why: the teacher patch zeroes whole BN channels until the reverse-engineered triggers fail, and those channels
carry the target class's own features too (CC_NOTES 14: the CA lost is the target's recall). A trigger may move
a layer's activations along one direction that is not a channel. Here, per BN layer, the trigger's mean effect on
the layer's output (post-BN, per channel, averaged over images and pixels) is one direction per trigger; the
patch projects those directions out of the layer's output, keeping the clean mean along them (mean ablation),
layers taken in order of the effect's size relative to the clean spread, as few as silence the triggers on the
held-out synthetic images (bisection, ``unlearn.prune_until``).

Teacher only (no compression, no distillation), the card's target, ``case.Case.images`` (512 synthetic images,
seed 1), the patch's own split (128 fit the triggers, 128 held out). Rows: the suspect; the default patch
(``PatchConfig()``, every plan); its "channels" plan alone; the directions. CA / ASR / target recall / redirect
on the first 2,000 test images, and the share of held-out synthetic predictions (not in the target) unchanged.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.unlearn import PatchConfig, named_bn2d, patch_head, prune_until, success_rate  # noqa: E402


@torch.no_grad()
def bn_output_stats(net, bns, x):
    """Per BN layer: (mean, std) of its output per channel over images and pixels."""
    seen = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append((out.mean((0, 2, 3)), out.std((0, 2, 3)))))
             for b in bns]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def trigger_directions(net, bns, fit, triggers):
    """Per BN layer: (score, Q, clean mean): Q's orthonormal columns span the triggers' mean shifts of the layer's
    output; score = the largest shift's norm over the norm of the clean per-channel std."""
    clean = bn_output_stats(net, bns, fit)
    shifted = [bn_output_stats(net, bns, t.apply(fit)) for t in triggers]
    out = []
    for i, (m, s) in enumerate(clean):
        d = torch.stack([sh[i][0] - m for sh in shifted], 1)  # C x T
        q, _ = torch.linalg.qr(d)
        out.append((float(d.norm(dim=0).max() / s.norm().clamp_min(1e-12)), q, m))
    return out


def ablate(bns, layers):
    """Forward hooks projecting each listed layer's directions out of its output (clean mean kept along them)."""
    handles = []
    for i, (_, q, m) in layers:
        def hook(_m, _i, out, q=q, m=m):
            centred = out - m.view(1, -1, 1, 1)
            coef = torch.einsum("nchw,ck->nkhw", centred, q)
            return out - torch.einsum("nkhw,ck->nchw", coef, q)
        handles.append(bns[i].register_forward_hook(hook))
    return handles


def unchanged(net, check, base, target):
    with torch.no_grad():
        keep = base != target
        return float((net(check).argmax(1) == base)[keep].float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspects", nargs="+")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--orders", nargs="+", default=["score"], choices=["score", "depth", "reverse depth"],
                    help="the order layers are ablated in (bisection over how many)")
    ap.add_argument("--single", action="store_true", help="also each layer's directions alone: the triggers' success")
    ap.add_argument("--no-baselines", action="store_true", help="skip the default patch row (the channels plan stays)")
    args = ap.parse_args()
    torch.manual_seed(0)
    for path in args.suspects:
        case = Case(path, n_test=args.n_test)
        images = case.images(512)
        net0 = input_model(case.model, case.spec).eval()
        print(os.path.basename(path), "suspect", case.real_line(net0), flush=True)
        cfg = PatchConfig()
        rows = (("default patch", cfg), ("channels plan", replace(cfg, plans=(("channels",),))))
        for label, pcfg in rows[args.no_baselines:]:
            model = copy.deepcopy(case.model).eval()
            net = input_model(model, case.spec).eval()
            res = patch_head(net, model, images, case.target, pcfg)
            with torch.no_grad():
                base = net0(res.check).argmax(1)
            print(f"  {label}: plan {res.plan}, {len(res.channels)} channels, {len(res.units)} head inputs, success "
                  f"{res.success_before} -> {res.success_after}, unchanged {unchanged(net, res.check, base, case.target):.3f} | "
                  f"{case.real_line(net)}", flush=True)
        # the directions, against the same fitted triggers the channels plan used
        triggers, check = res.used, res.check
        model = copy.deepcopy(case.model).eval()
        net = input_model(model, case.spec).eval()
        bns = [b for _, b in named_bn2d(model)]
        fit = images[: cfg.n_reverse]
        dirs = trigger_directions(net, bns, fit, triggers)
        names = [n for n, _ in named_bn2d(model)]
        handles = []

        def ablate_only(idx):
            for h in handles:
                h.remove()
            handles.clear()
            handles.extend(ablate(bns, [(i, dirs[i]) for i in idx]))

        if args.single:
            singles = []
            for i in range(len(dirs)):
                ablate_only([i])
                singles.append(f"{names[i]} {dirs[i][0]:.2f}:{max(success_rate(net, check, t) for t in triggers):.2f}")
            print("  single layers (score: success):", ", ".join(singles), flush=True)
        orders = {"score": sorted(range(len(dirs)), key=lambda i: -dirs[i][0]), "depth": list(range(len(dirs))),
                  "reverse depth": list(range(len(dirs)))[::-1]}
        for label in args.orders:
            order = orders[label]
            k, after = prune_until(net, check, triggers, lambda k: ablate_only(order[:k]), len(order),
                                   cfg.success_below)
            print(f"  directions by {label}: {k} of {len(order)} layers ({', '.join(names[i] for i in order[:k][:6])}"
                  f"{', ...' if k > 6 else ''}), {len(triggers)} triggers, success -> {round(after, 4)}, unchanged "
                  f"{unchanged(net, check, base, case.target):.3f} | {case.real_line(net)}", flush=True)
        ablate_only([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
