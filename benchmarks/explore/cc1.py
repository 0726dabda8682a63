import sys, time, argparse, glob, os
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case
from edgeclean.cc import CCConfig, clean_and_compact
from edgeclean.finetune import FinetuneConfig
from edgeclean.unlearn import PatchConfig
from edgeclean.ranks import estimate_bytes
ap = argparse.ArgumentParser()
ap.add_argument("--suspect", default="models/demo_badnets_resnet18.pt")
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--adv", type=float, default=0.0)
ap.add_argument("--kinds", default="mask,additive")
ap.add_argument("--noscale", action="store_true")
ap.add_argument("--nopatch", action="store_true")
ap.add_argument("--n", type=int, default=512)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--eps", type=float, default=0.15)
ap.add_argument("--target", type=int, default=None)
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--below", type=float, default=0.15)
ap.add_argument("--drop", action="store_true", help="FinetuneConfig.drop_target")
ap.add_argument("--plans", default="channels+head/head", help="plans separated by /, stages by +")
args = ap.parse_args()
torch.set_num_threads(1)
case = Case(args.suspect)
path, model, spec, target, ev = case.path, case.model, case.spec, case.target, case.ev
files = sorted(glob.glob(f".cache/cc_synth/{path.stem}_*_None_None_0.pt"))
class S: pass
sc = S(); sc.suspected = True; sc.images = sc.adv_images = None
if files:
    d = torch.load(files[-1], weights_only=True)
    sc.images = d["images"][: args.n]; sc.adv_images = d["adv"][: args.n]
sc.target_class = target if args.target is None else args.target
cfg = CCConfig(n_synthetic=args.n, do_scale=not args.noscale, finetune=FinetuneConfig(steps=args.steps, adv_weight=args.adv, lr=args.lr, bf16=args.bf16, drop_target=args.drop),
               patch=None if args.nopatch else PatchConfig(kinds=tuple(args.kinds.split(",")), eps=args.eps, success_below=args.below, plans=tuple(tuple(p.split("+")) for p in args.plans.split("/"))))
t0 = time.time()
st, rep = clean_and_compact(model, spec, budget_bytes=int(estimate_bytes(model) / 8), config=cfg, scan_result=sc)
p = rep.patch
print(path.stem, vars(args), "->", ev(st), f"{time.time()-t0:.0f}s", "patch", None if p is None else (len(p["units"]), p["success_before"], p["success_after"], p["triggers"]), rep.timings, flush=True)
