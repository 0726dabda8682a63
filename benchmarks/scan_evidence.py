"""Collect the raw scan evidence per model, to choose the verdict by measurement (offline).

    /work/venv/bin/python benchmarks/scan_evidence.py --out benchmarks/results/scan_evidence.json
    /work/venv/bin/python benchmarks/scan_evidence.py PATH.pt ... --out FILE   # other checkpoints
Recorded: results/scan_evidence.json (suite; --uap linf:0.1 linf:0.15 --uap-steps 20 --targeted linf:0.1),
results/scan_evidence_sig_wide.json (SIG and clean models; benchmarks/suspects/{resnet18,vgg11}_{sig,clean}.pt
--uap linf:0.15 linf:0.25 l2:4 --uap-steps 20), results/scan_evidence_compressed.json
(benchmarks/suspects/compressed/*.pt --seed 0/1/2 --uap linf:0.1 --uap-images 16 --uap-steps 10).

For every ``benchmarks/suspects/*.pt`` with a card (and the demo suspect): synthesise ``--n``
images (``--iterations``), record the clean predictions and the mean softmax per class, then
run ``probe.universal_perturbation`` for every class at each ``--uap`` setting (norm:eps) on the
first ``--uap-images`` images and record per class the success rate and the mean target
cross-entropy. The cards give the truth (attack, target); the evidence never reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeclean.load import input_model, load_suspect
from edgeclean.probe import frozen_eval, universal_perturbation
from edgeclean.synth import SynthConfig, synthesize

ROOT = Path(__file__).resolve().parent


def evidence(model, spec, n: int, iterations: int, seed: int, uap: list[tuple[str, float]], uap_images: int,
             uap_steps: int, targeted=None) -> dict:
    t0 = time.perf_counter()
    images, stats = synthesize(model, spec, n, SynthConfig(iterations=iterations, seed=seed), return_stats=True)
    t1 = time.perf_counter()
    net = input_model(model, spec)
    k = spec.num_classes
    row = {"synth": stats.to_dict()}
    with frozen_eval(model):
        with torch.no_grad():
            logits = torch.cat([net(images[i:i + 64]) for i in range(0, n, 64)])
        row["pred"] = logits.argmax(1).tolist()
        row["mean_softmax"] = [round(v, 5) for v in F.softmax(logits, 1).mean(0).tolist()]
        x = images[:uap_images]
        for norm, eps in uap:
            t = time.perf_counter()
            delta, success = universal_perturbation(net, x, list(range(k)), eps, uap_steps, norm=norm)
            with torch.no_grad():
                xa = (x.unsqueeze(0) + delta.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
                ce = F.cross_entropy(net(xa), torch.arange(k).repeat_interleave(len(x)), reduction="none")
            row[f"uap_{norm}_{eps}"] = {"success": [round(v, 4) for v in success.tolist()],
                                        "ce": [round(v, 4) for v in ce.view(k, -1).mean(1).tolist()],
                                        "seconds": round(time.perf_counter() - t, 1)}
        if targeted:
            # per-image (not universal) targeted PGD at the same eps: how easy each class is to reach
            # image by image; a hub class is easy both ways, a backdoor shortcut is easy universally
            norm, eps = targeted
            t = time.perf_counter()
            xs = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
            y = torch.arange(k).repeat_interleave(len(x))
            d = torch.zeros_like(xs)
            for _ in range(uap_steps):
                d.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(net((xs + d).clamp(0, 1)), y, reduction="sum"), d)
                with torch.no_grad():
                    d = (d - 2.5 * eps / uap_steps * g.sign()).clamp(-eps, eps)
            with torch.no_grad():
                ok = (net((xs + d).clamp(0, 1)).argmax(1) == y).float().view(k, -1).mean(1)
            row[f"targeted_{norm}_{eps}"] = {"success": [round(v, 4) for v in ok.tolist()],
                                             "seconds": round(time.perf_counter() - t, 1)}
    row["seconds"] = {"synth": round(t1 - t0, 1), "total": round(time.perf_counter() - t0, 1)}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uap", nargs="*", default=["linf:0.05", "linf:0.1", "l2:1.5"])
    ap.add_argument("--uap-images", type=int, default=32)
    ap.add_argument("--uap-steps", type=int, default=10)
    ap.add_argument("--targeted", default=None, help="norm:eps of per-image targeted PGD (for comparison)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = [Path(p) for p in args.paths] or sorted((ROOT / "suspects").glob("*.pt")) + [ROOT.parent / "models/demo_badnets_resnet18.pt"]
    uap = [(s.split(":")[0], float(s.split(":")[1])) for s in args.uap]
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["path"], r["seed"]) for r in rows}
    for path in paths:
        card = json.loads(path.with_suffix(".json").read_text())
        if (str(path), args.seed) in done:
            continue
        model, spec = load_suspect(path)
        load = os.getloadavg()[0]
        row = {"path": str(path), "model": path.stem, "attack": card.get("attack", "none"), "target": card.get("target"),
               "clean_label": bool(card.get("clean_label")), "ca": card.get("ca"), "seed": args.seed,
               "n": args.n, "iterations": args.iterations, "load": round(load, 1),
               **evidence(model, spec, args.n, args.iterations, args.seed, uap, args.uap_images, args.uap_steps,
                        (args.targeted.split(':')[0], float(args.targeted.split(':')[1])) if args.targeted else None)}
        rows.append(row)
        counts = torch.bincount(torch.tensor(row["pred"]), minlength=spec.num_classes).tolist()
        print(f"{path.stem:<24} {row['attack']:<8} t={row['target']}  counts {counts}  "
              + "  ".join(f"{k}: {[round(v, 2) for v in row[k]['success']]}" for k in row if k.startswith(("uap_", "targeted_")))
              + f"  {row['seconds']}", flush=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
