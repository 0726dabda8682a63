"""Choose C&C's scaling variant and tau by measurement on the harness suspects.

For each suspect (checkpoint + card naming attack/target) and each variant, runs
``clean_and_compact`` at budget = original fp32 size / 8 and evaluates CA / ASR / R-Acc on the
Fashion-MNIST test split (first --limit images). The synthetic data (scan images + top-up) is
made once per suspect and cached, so variants differ only in what they are meant to differ in.

    nice -n 15 /work/venv/bin/python benchmarks/cc_variants.py models/demo_badnets_resnet18.pt \
        --variants none,zscore-clip-3,zscore-zero-3 --limit 2000 --out benchmarks/results/cc_variants.json

Variant names: "none" (no scaling: synthetic fine-tuning alone), "noft-<variant>" (scaling alone,
no fine-tuning), else "<norm>-<rule>-<tau>[-<factor>]"; prefix "dense-" keeps the size (no budget
given and every layer dense: rank scaling + fine-tuning without compression).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.cc import CCConfig, clean_and_compact, synthetic_data  # noqa: E402
from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.finetune import FinetuneConfig  # noqa: E402
from edgeclean.load import input_model, load_suspect, read_card  # noqa: E402
from edgeclean.metrics import evaluate  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from edgeclean.scaling import ScaleConfig  # noqa: E402
from edgeclean.unlearn import PatchConfig  # noqa: E402

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "cc_synth"




def data_for(path: Path, model, spec, n: int, cfg: CCConfig):
    """Synthetic + adversarial images for a suspect, cached on disk by (file, n, synth iterations)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = CACHE / f"{path.stem}_{n}_{cfg.synth_iterations}_{cfg.probe_eps}_{cfg.seed}.pt"
    if key.exists():
        return torch.load(key, weights_only=True)
    t0 = time.perf_counter()
    images, adv, idx, info = synthetic_data(model, spec, n, cfg)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    obj = {"images": images, "adv": adv, "idx": idx, "info": info}
    torch.save(obj, key)
    return obj


def scan_for(path: Path, model, spec):
    """edgeclean.scan's result (default config) for a suspect, cached on disk."""
    from edgeclean.scan import ScanConfig, scan

    CACHE.mkdir(parents=True, exist_ok=True)
    key = CACHE / f"{path.stem}_scan.pt"
    if key.exists():
        d = torch.load(key, weights_only=True)
    else:
        r = scan(model, spec, ScanConfig(threads=1))
        d = {"images": r.images, "adv": r.adv_images, "suspected": bool(r.suspected),
             "target": -1 if r.target_class is None else int(r.target_class)}
        torch.save(d, key)
    return _Scan(d["images"], d["adv"], d["target"] if d["suspected"] and d["target"] >= 0 else None)


def parse_variant(name: str, base: CCConfig) -> CCConfig:
    cfg = base
    if name.startswith("noft-"):
        cfg, name = replace(cfg, do_finetune=False), name[5:]
    if name.startswith("dense-"):
        cfg, name = replace(cfg, ranks=replace(cfg.ranks, dense_fraction=0.0)), name[6:]
    if name == "none":
        return replace(cfg, do_scale=False)
    parts = name.split("-")
    sc = ScaleConfig(norm=parts[0], rule=parts[1], tau=float(parts[2]))
    if len(parts) > 3:
        sc = replace(sc, factor=float(parts[3]))
    return replace(cfg, scale=sc)


class _Scan:
    """Just the fields of ScanResult that C&C reads."""

    def __init__(self, images, adv_images, target_class=None):
        self.images, self.adv_images = images, adv_images
        self.suspected, self.target_class = target_class is not None, target_class


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("suspects", nargs="+")
    ap.add_argument("--variants", default="none,zscore-clip-3")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--n", type=int, default=CCConfig.n_synthetic)
    ap.add_argument("--steps", type=int, default=FinetuneConfig.steps)
    ap.add_argument("--ratio", type=float, default=8.0, help="budget = original fp32 estimate / ratio")
    ap.add_argument("--bn", default="train")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--adv-weight", type=float, default=FinetuneConfig.adv_weight)
    ap.add_argument("--patch-eps", type=float, default=PatchConfig.eps, help="L-inf bound of the additive trigger of the teacher patch")
    ap.add_argument("--patch-kinds", default=",".join(PatchConfig.kinds))
    ap.add_argument("--no-patch", action="store_true", help="distil from the unpatched suspect")
    ap.add_argument("--online-steps", type=int, default=0)
    ap.add_argument("--online-eps", type=float, default=0.1)
    ap.add_argument("--online-weight", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--oracle-target", action="store_true",
                    help="aim online unlearning at the card's target class (stands in for the scan's verdict)")
    ap.add_argument("--drop-target", action="store_true")
    ap.add_argument("--suppress-target", default="off", choices=["off", "argmax", "all"])
    ap.add_argument("--trigger-eps", type=float, default=0.0)
    ap.add_argument("--trigger-weight", type=float, default=1.0)
    ap.add_argument("--scan", action="store_true",
                    help="run edgeclean.scan (cached) and pass its result: its images and, if suspected, its target")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared: more threads only add contention
    test = load_fashion_mnist("test").subset(range(args.limit))
    rows = []
    base = CCConfig(n_synthetic=args.n, finetune=FinetuneConfig(steps=args.steps, bn=args.bn, lr=args.lr,
                                                                 adv_weight=args.adv_weight, online_steps=args.online_steps,
                                                                 online_eps=args.online_eps, online_weight=args.online_weight,
                                                                 temperature=args.temperature, drop_target=args.drop_target,
                                                                 suppress_target=args.suppress_target,
                                                                 trigger_eps=args.trigger_eps, trigger_weight=args.trigger_weight),
                    patch=None if args.no_patch else PatchConfig(eps=args.patch_eps, kinds=tuple(args.patch_kinds.split(","))))
    for s in args.suspects:
        path = Path(s)
        card = read_card(path)
        model, spec = load_suspect(path)
        attack, target, params = card.get("attack"), card.get("target"), card.get("attack_params")
        if attack in (None, "none", "clean"):
            attack = None
        ref = evaluate(input_model(model, spec), test, attack, target, params)
        print(f"{path.name}: suspect CA {ref['ca']:.4f} ASR {ref.get('asr', float('nan')):.4f}", flush=True)
        scan_res = scan_for(path, model, spec) if args.scan else None
        if scan_res is not None:
            print(f"  scan: suspected {scan_res.suspected} target {scan_res.target_class} (card target {target})", flush=True)
        needs_data = any(not v.startswith("noft-") for v in args.variants.split(","))
        data = data_for(path, model, spec, args.n, base) if needs_data else {"images": None, "adv": None}
        budget = int(estimate_bytes(model) / args.ratio)
        for v in args.variants.split(","):
            cfg = parse_variant(v, base)
            t0 = time.perf_counter()
            scan = _Scan(data["images"], data["adv"], target if args.oracle_target else None)
            if scan_res is not None:  # the scan's images first, then the cached top-up; the scan's verdict
                scan = _Scan(torch.cat([scan_res.images, data["images"]]), torch.cat([scan_res.adv_images, data["adv"]]),
                             scan_res.target_class)
            cleaned, report = clean_and_compact(model, spec, budget_bytes=None if v.startswith(("dense-", "noft-dense-")) else budget,
                                                config=cfg, scan_result=scan)
            secs = time.perf_counter() - t0
            res = evaluate(input_model(cleaned, spec), test, attack, target, params)
            tc = target if target is not None else getattr(scan, "target_class", None)
            if tc is not None:  # recall of the (card's) target class on clean test images: did FT just erase the class?
                with torch.no_grad():
                    m = input_model(cleaned, spec).eval()
                    sel = test.y == tc
                    res["target_recall"] = float((m(test.x[sel]).argmax(1) == tc).float().mean())
            n_scaled = sum(len(m.get("indices", [])) for l in report.layers for m in l["scaled"].values())
            row = {"suspect": path.name, "attack": attack, "target": target, "variant": v, "patch": report.patch,
                   "ca": round(res["ca"], 4), "asr": round(res.get("asr", float("nan")), 4),
                   "racc": round(res.get("racc", float("nan")), 4),
                   "target_recall": round(res.get("target_recall", float("nan")), 4),
                   "scan_target": getattr(scan, "target_class", None),
                   "ca_ref": round(ref["ca"], 4), "asr_ref": round(ref.get("asr", float("nan")), 4),
                   "bytes_est": report.estimated_bytes_after, "bytes_ref": report.estimated_bytes_before,
                   "scaled_components": n_scaled, "seconds": round(secs, 1), "timings": report.timings}
            rows.append(row)
            print(f"  {v:24s} CA {row['ca']:.4f} ({100 * (row['ca'] - row['ca_ref']):+.2f} pt)  ASR {row['asr']:.4f}  "
                  f"R-Acc {row['racc']:.4f}  target-recall {row['target_recall']:.3f}  size {row['bytes_est'] / row['bytes_ref']:.3f}x  scaled {n_scaled}  {secs:.0f}s",
                  flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
