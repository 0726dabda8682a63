"""Trigger-guided pruning of BatchNorm channels anywhere in the net, instead of head inputs only
(exploration, CC_NOTES section 9).

Triggers as in unlearn.patch_head (mask + additive, fitted on 128 synthetic images towards the card's
target). Per BN channel: rise of its input mean when the trigger is stamped on, in units of the channel's
running std (real-data statistics, data-free) and signed by gamma (a rise that survives BN + ReLU). Zero
gamma and beta of the most excited channels (global order) until the triggers flip < 30% of held-out
synthetic images. Teacher CA / ASR on the first 1,000 test images.

    OMP_NUM_THREADS=1 python benchmarks/explore/chanprune.py benchmarks/suspects/vgg11_blended.pt ...
"""
import argparse, copy, json, os, sys, time
from pathlib import Path
import torch
from torch import nn
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean.data import load_fashion_mnist
from edgeclean.load import input_model, load_suspect, read_card
from edgeclean.metrics import evaluate
from edgeclean.synth import SynthConfig, synthesize
from edgeclean.unlearn import PatchConfig, reverse_trigger, success_rate

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--max-fraction", type=float, default=0.1)
ap.add_argument("--skip-last", type=int, default=0, help="ignore the last K BN layers")
ap.add_argument("--out", default="benchmarks/results/explore_chanprune.json")
args = ap.parse_args()
torch.set_num_threads(1)
test = load_fashion_mnist("test").subset(range(1000))
rows = json.load(open(args.out)) if os.path.exists(args.out) else {}


@torch.no_grad()
def bn_input_means(net, bns, x):
    seen = []
    hs = [b.register_forward_pre_hook(lambda m, i: seen.append(i[0].mean((0, 2, 3)))) for b in bns]
    try:
        net(x)
    finally:
        for h in hs:
            h.remove()
    return seen


for s in args.suspects:
    path = Path(s); card = read_card(path)
    model, spec = load_suspect(path); model.eval()
    attack, target, params = card.get("attack"), card.get("target"), card.get("attack_params")
    cache = Path(f".cache/refit/{path.stem}.pt")
    if cache.exists():
        images = torch.load(cache, weights_only=True)
    else:
        images = synthesize(model, spec, 512, SynthConfig(seed=1)); torch.save(images, cache)
    fit, check = images[:128], images[128:256]
    t0 = time.time()
    m = copy.deepcopy(model).eval(); net = input_model(m, spec)
    trigs = [reverse_trigger(net, fit, target, k, PatchConfig(bf16=False)) for k in ("mask", "additive")]
    trigs = [t for t in trigs if success_rate(net, check, t) >= 0.5]
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    if args.skip_last:
        bns = bns[: -args.skip_last]
    clean = bn_input_means(net, bns, check)
    rises = [torch.stack(z) for z in zip(*[bn_input_means(net, bns, t.apply(check)) for t in trigs])]
    score = torch.cat([((r.max(0).values - c) / (b.running_var + b.eps).sqrt()) * b.weight.sign()
                       for r, c, b in zip(rises, clean, bns)])
    owner = [(i, j) for i, b in enumerate(bns) for j in range(b.num_features)]
    order = score.argsort(descending=True)
    saved = [(b.weight.detach().clone(), b.bias.detach().clone()) for b in bns]

    @torch.no_grad()
    def prune(k):
        for b, (w, bb) in zip(bns, saved):
            b.weight.copy_(w); b.bias.copy_(bb)
        for idx in order[:k].tolist():
            i, j = owner[idx]; bns[i].weight[j] = 0; bns[i].bias[j] = 0
        return max(success_rate(net, check, t) for t in trigs)

    limit = int(args.max_fraction * len(owner)); lo, hi = 0, limit
    before = prune(0)
    if prune(hi) >= 0.3:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prune(mid) < 0.3:
            hi = mid
        else:
            lo = mid
    after = prune(hi)
    dt = time.time() - t0
    r = evaluate(input_model(m, spec).eval(), test, attack, target, params)
    layers = sorted({owner[i][0] for i in order[:hi].tolist()})
    row = {"ca": round(r["ca"] * 100, 1), "asr": round(r["asr"] * 100, 1), "channels": hi, "of": len(owner),
           "layers": layers, "success": (round(before, 3), round(after, 3)), "seconds": round(dt, 1),
           "max_fraction": args.max_fraction, "skip_last": args.skip_last}
    print(path.stem, row, flush=True)
    rows[f"{path.stem}_f{args.max_fraction}_s{args.skip_last}"] = row
    json.dump(rows, open(args.out, "w"), indent=1)
