"""Teacher patch alone, then a ridge refit of the patched head (exploration, CC_NOTES section 9).

For each suspect (card target standing in for the scan's verdict): 512 synthetic images, the
default patch (unlearn.patch_head), then the head refitted by least squares on the synthetic
images and their trigger-stamped copies, towards the UNPATCHED teacher's logits on the clean
images, pulled towards the patched weights (ridge). CA / ASR on the first 1,000 test images.

    OMP_NUM_THREADS=1 python benchmarks/explore/refit.py benchmarks/suspects/vgg11_badnets.pt ...
"""
import argparse, copy, json, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case
from edgeclean.load import input_model
from edgeclean.unlearn import PatchConfig, classifier_head, head_inputs, patch_head, reverse_trigger

ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--lam", type=float, nargs="+", default=[0.1, 1.0, 10.0])
ap.add_argument("--out", default="benchmarks/results/explore_refit.json")
args = ap.parse_args()
torch.set_num_threads(1)
rows = json.load(open(args.out)) if os.path.exists(args.out) else {}

for s in args.suspects:
    case = Case(s)
    model, spec, target, ev, path = case.model.eval(), case.spec, case.target, case.ev, case.path
    images = case.images()
    row = {"before": ev(model)}
    t0 = time.time()
    patched = copy.deepcopy(model).eval(); net = input_model(patched, spec)
    res = patch_head(net, patched, images, target, PatchConfig())
    row["patch_s"] = round(time.time() - t0, 1)
    row["units"] = len(res.units); row["n_inputs"] = res.n_inputs
    row["success"] = (res.success_before, res.success_after)
    row["patched"] = ev(patched)
    # refit: features of the patched net (pruned units' columns are zero, their activations still flow;
    # zero them in the design matrix so the refit cannot use them)
    name, head = classifier_head(patched)
    keep = torch.ones(head.in_features, dtype=torch.bool); keep[res.units] = False
    trigs = [reverse_trigger(net, images[:128], target, k, PatchConfig()) for k in PatchConfig().kinds]
    with torch.no_grad():
        z_clean = input_model(model, spec)(images)  # unpatched teacher's logits on clean synthetic images
        feats = [head_inputs(net, head, images)] + [head_inputs(net, head, t.apply(images)) for t in trigs]
    F_ = torch.cat(feats)[:, keep].double()
    Z = z_clean.repeat(len(feats), 1).double()
    W0 = head.weight.detach()[:, keep].double(); b0 = head.bias.detach().double()
    X = torch.cat([F_, torch.ones(len(F_), 1, dtype=torch.double)], 1)
    Wb0 = torch.cat([W0, b0[:, None]], 1)
    scale = (X ** 2).mean(0).mean()
    for lam in args.lam:
        A = X.T @ X / len(X) + lam * scale * torch.eye(X.shape[1], dtype=torch.double)
        B = X.T @ Z / len(X) + lam * scale * Wb0.T
        Wb = torch.linalg.solve(A, B).T
        refit = copy.deepcopy(patched)
        _, h2 = classifier_head(refit)
        with torch.no_grad():
            w = torch.zeros_like(h2.weight); w[:, keep] = Wb[:, :-1].float(); h2.weight.copy_(w); h2.bias.copy_(Wb[:, -1].float())
        row[f"refit_{lam}"] = ev(refit)
    print(path.stem, row, flush=True)
    rows[path.stem] = row
    json.dump(rows, open(args.out, "w"), indent=1)
