"""Teacher patch variants: where to prune, fewer trigger-fitting images / steps, bf16 (exploration, CC_NOTES section 9).

Per suspect (card target standing in for the scan's verdict) and per setting: patch_head on the 512
synthetic images cached by refit.py, teacher CA / ASR after the patch on the first 1,000 test images,
pruned units and patch time (1 thread, loaded).

    OMP_NUM_THREADS=1 python benchmarks/explore/patch_cost.py benchmarks/suspects/resnet18_badnets.pt ...
"""
import argparse, copy, json, os, sys, time
from dataclasses import replace
from pathlib import Path
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean.data import load_fashion_mnist
from edgeclean.load import input_model, load_suspect, read_card
from edgeclean.metrics import evaluate
from edgeclean.synth import SynthConfig, synthesize
from edgeclean.unlearn import PatchConfig, patch_head

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--settings", nargs="+", default=["channels+head,128,200,0", "channels+head,64,100,1"],
                help="where,n_reverse,steps,bf16[,success_below] per setting (where: plans separated by /, stages by +, e.g. channels+head/head)")
ap.add_argument("--out", default="benchmarks/results/explore_patch_cost.json")
args = ap.parse_args()
torch.set_num_threads(1)
test = load_fashion_mnist("test").subset(range(1000))
rows = json.load(open(args.out)) if os.path.exists(args.out) else {}
for s in args.suspects:
    path = Path(s); card = read_card(path)
    model, spec = load_suspect(path); model.eval()
    attack, target, params = card.get("attack"), card.get("target"), card.get("attack_params")
    cache = Path(f".cache/refit/{path.stem}.pt")
    if cache.exists():
        images = torch.load(cache, weights_only=True)
    else:
        images = synthesize(model, spec, 512, SynthConfig(seed=1)); torch.save(images, cache)
    for setting in args.settings:
        where, n, steps, bf16, *rest = setting.split(",")
        cfg = replace(PatchConfig(), plans=tuple(tuple(p.split("+")) for p in where.split("/")), n_reverse=int(n), steps=int(steps), bf16=bool(int(bf16)))
        if rest:
            cfg = replace(cfg, success_below=float(rest[0]))
        patched = copy.deepcopy(model).eval()
        t0 = time.time()
        res = patch_head(input_model(patched, spec), patched, images, target, cfg)
        dt = time.time() - t0
        r = evaluate(input_model(patched, spec).eval(), test, attack, target, params)
        row = {"ca": round(r["ca"] * 100, 1), "asr": round(r["asr"] * 100, 1), "units": len(res.units),
               "channels": len(res.channels), "plan": res.plan, "candidates": res.candidates,
               "success": (res.success_before, res.success_after), "seconds": round(dt, 1)}
        print(path.stem, setting, row, flush=True)
        rows.setdefault(path.stem, {})[setting] = row
        json.dump(rows, open(args.out, "w"), indent=1)
