"""Clean-label SIG: which data-free evidence, if any, singles out its target? (offline exploration)

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/scan_sig.py --seed S --out benchmarks/results/scan_sig_seedS.json
    ... benchmarks/scan_sig.py benchmarks/suspects/compressed/*_clean_*.pt --seed S --out ...   # false positives

For every suspect with a card: synthesise ``--n`` images (BN statistics, as the scan does), then, per
perturbation FAMILY and budget, find for every class one universal perturbation in that family
(Adam on the family's parameters, ``--steps`` steps, on the first ``--fit`` images) and record the
share of the OTHER (held-out) synthetic images it sends to that class. Families:

  full_linf  unconstrained L-inf ball (what the scan uses now), eps = budget
  dct{k}     only the lowest k x k 2-D DCT frequencies, L-inf eps on the pixels (tanh-bounded)
  rank1      a separable pattern eps * tanh(a) tanh(b)^T per channel (gratings, stripes, gradients)
  grating    no optimisation: the scan's grating probe (``probe.grating_probe``: 1-D sinusoidal
             gratings up to side/4 cycles, 8 phases, amplitude eps; each class's best grating
             re-measured on images it was not chosen on), over all --n images

Success of the optimised families = share of the held-out images (all but the first --fit) that the
class's perturbation puts in that class; grating = share moved INTO the class from another class.

The idea: unconstrained small perturbations reach a clean model's hub class (Fashion-MNIST's shirt)
as easily as a backdoor target; a low-dimensional family of GLOBAL patterns needs a large amplitude
to change a clean model's mind, but a backdoored model whose trigger is (close to) such a pattern
answers with its target. The cards give the truth (attack, target); the evidence never reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from case import carded
from edgeclean.load import input_model
from edgeclean.probe import (
    GratingConfig,
    frozen_eval,
    grating_probe,
    universal_perturbation,
)
from edgeclean.scan import grating_gap
from edgeclean.synth import SynthConfig, synthesize

ROOT = Path(__file__).resolve().parent


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (rows are basis vectors)."""
    i = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def family_delta(family: str, theta, shape, eps: float) -> torch.Tensor:
    _, h, w = shape
    if family.startswith("dct"):
        k = int(family[3:])
        dh, dw = dct_matrix(h)[:k], dct_matrix(w)[:k]  # k x H, k x W
        pix = torch.einsum("tcij,ih,jw->tchw", theta[0], dh, dw)
        return eps * torch.tanh(pix)
    if family == "rank1":
        a, b = theta
        return eps * torch.tanh(a).unsqueeze(-1) * torch.tanh(b).unsqueeze(-2)
    raise ValueError(family)


def family_params(family: str, t: int, shape, gen) -> list[torch.Tensor]:
    c, h, w = shape
    if family.startswith("dct"):
        k = int(family[3:])
        return [0.01 * torch.randn(t, c, k, k, generator=gen)]
    if family == "rank1":
        return [0.5 * torch.randn(t, c, h, generator=gen), 0.5 * torch.randn(t, c, w, generator=gen)]
    raise ValueError(family)


def structured_uap(net, fit, held, k: int, family: str, eps: float, steps: int, lr: float = 0.1, seed: int = 0):
    """Per class, one perturbation of ``family`` fitted on ``fit``; returns per-class success on ``held``."""
    gen = torch.Generator().manual_seed(seed)
    theta = [p.requires_grad_(True) for p in family_params(family, k, fit.shape[1:], gen)]
    opt = torch.optim.Adam(theta, lr=lr)
    y = torch.arange(k).repeat_interleave(len(fit))
    for _ in range(steps):
        d = family_delta(family, theta, fit.shape[1:], eps)
        xa = (fit.unsqueeze(0) + d.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
        loss = F.cross_entropy(net(xa), y, reduction="sum") / len(fit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        d = family_delta(family, theta, fit.shape[1:], eps)
        return success_on(net, held, d)


def success_on(net, held, d) -> list[float]:
    k = len(d)
    out = []
    with torch.no_grad():
        for c in range(k):
            p = net((held + d[c]).clamp(0, 1)).argmax(1)
            out.append(round(float((p == c).float().mean()), 4))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", nargs="*", default=["full_linf:0.15", "dct8:0.3", "dct14:0.3", "rank1:0.3",
                                                   "grating:0.3", "grating:0.35"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = [Path(p) for p in args.paths] or sorted((ROOT / "suspects").glob("*.pt"))
    rows = []
    for path, card, model, spec in carded(paths):
        t0 = time.perf_counter()
        images = synthesize(model, spec, args.n, SynthConfig(iterations=args.iterations, seed=args.seed))
        net = input_model(model, spec)
        k = spec.num_classes
        fit, held = images[:args.fit], images[args.fit:]
        row = {"model": path.stem, "attack": card.get("attack", "none"), "target": card.get("target"),
               "seed": args.seed, "load": round(os.getloadavg()[0], 1), "runs": {}}
        with frozen_eval(model):
            for run in args.runs:
                fam, eps = run.split(":")
                eps = float(eps)
                t = time.perf_counter()
                if fam == "grating":  # the scan's probe (edgeclean.probe.grating_probe) at this amplitude
                    g = grating_probe(net, images, k, GratingConfig(amplitude=eps))
                    s = [round(v, 4) for v in g.shares]
                    row.setdefault("grating_patterns", {})[run] = g.gratings
                    row.setdefault("grating_median", {})[run] = [round(v, 4) for v in g.median_shares]
                    row.setdefault("grating_gap", {})[run] = [grating_gap(g.shares, g.median_shares)[0],
                                                              round(grating_gap(g.shares, g.median_shares)[1], 4)]
                elif fam == "full_linf":
                    d, _ = universal_perturbation(net, fit, list(range(k)), eps, args.steps)
                    s = success_on(net, held, d)
                else:
                    s = structured_uap(net, fit, held, k, fam, eps, args.steps, seed=args.seed)
                top = sorted(range(k), key=lambda c: -s[c])
                row["runs"][run] = {"success": s, "top": top[0], "gap": round(s[top[0]] - s[top[1]], 4),
                                    "seconds": round(time.perf_counter() - t, 1)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{row['model']:<24} {row['attack']:<8} t={str(row['target']):>4} "
              + " ".join(f"{r}:{v['top']}/{v['gap']:.2f}" for r, v in row["runs"].items()) + f"  {row['seconds']}s", flush=True)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
