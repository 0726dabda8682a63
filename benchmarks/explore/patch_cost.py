"""Teacher patch variants: where to prune, fewer trigger-fitting images / steps, bf16 (exploration, CC_NOTES section 9).

Per suspect (card target standing in for the scan's verdict) and per setting: patch_head on the 512
synthetic images cached in .cache/refit/ (``case.Case.images``), teacher CA / ASR after the patch on the first 1,000 test images,
pruned units and patch time (1 thread, loaded).

    OMP_NUM_THREADS=1 python benchmarks/explore/patch_cost.py benchmarks/suspects/resnet18_badnets.pt ...
"""
import argparse, copy, json, os, sys, time
from dataclasses import replace
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case
from edgeclean.load import input_model
from edgeclean.unlearn import PatchConfig, patch_head

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--settings", nargs="+", default=["channels+head,128,200,1,0.3", "channels+head,64,100,1,0.3"],
                help="plans,n_reverse,steps,bf16,success_below per setting (plans separated by /, stages by +, "
                     "e.g. channels+head/head)")
ap.add_argument("--out", default="benchmarks/results/explore_patch_cost.json")
args = ap.parse_args()
torch.set_num_threads(1)
rows = json.load(open(args.out)) if os.path.exists(args.out) else {}
for s in args.suspects:
    case = Case(s)
    model, spec, path, images = case.model.eval(), case.spec, case.path, case.images()
    for setting in args.settings:
        where, n, steps, bf16, below = setting.split(",")
        cfg = replace(PatchConfig(), plans=tuple(tuple(p.split("+")) for p in where.split("/")), n_reverse=int(n),
                      steps=int(steps), bf16=bool(int(bf16)), success_below=float(below))
        patched = copy.deepcopy(model).eval()
        t0 = time.time()
        res = patch_head(input_model(patched, spec), patched, images, case.target, cfg)
        dt = time.time() - t0
        ca, asr = case.ev(patched)
        row = {"ca": ca, "asr": asr, "units": len(res.units),
               "channels": len(res.channels), "plan": res.plan, "candidates": res.candidates,
               "success": (res.success_before, res.success_after), "seconds": round(dt, 1)}
        print(path.stem, setting, row, flush=True)
        rows.setdefault(path.stem, {})[setting] = row
        json.dump(rows, open(args.out, "w"), indent=1)
