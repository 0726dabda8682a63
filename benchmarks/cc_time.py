"""Wall time of the C&C stage per stage for a full-width ResNet-18 on 28x28 (1 channel, 10 classes).

The weights are a fresh initialisation (no full-width suspect is trained in the suite): the
time of every stage depends on shapes, not on the weight values. The scan (which makes the
synthetic images C&C reuses) is timed separately from the C&C stage itself.

    /work/venv/bin/python -u benchmarks/cc_time.py --stem cifar --threads 2 --n 512
    /work/venv/bin/python -u benchmarks/cc_time.py --stem imagenet --threads 2 --n 512
    python -u benchmarks/cc_time.py --suspect R18_FULL.pt --target -1 --threads 2 --n 512   # a trained suspect, as scanned

Measured idle (no other job), 2026-11-22, teacher patch included (CC_NOTES section 11): C&C stage
844.6 s with the cifar stem (synthesis 209.0, patch 317.3, distillation 317.3), 128.6 s with the
imagenet stem (41.9, 36.5, 49.2). Session 4, with the measured rank proxy (CC_NOTES section 13):
imagenet stem 169.7 s (synthesis 44.5, allocation 23.3, patch 39.1, distillation 61.7); the cifar
stem was not re-measured. Session 7, warp trigger included (CC_NOTES section 19; nothing else running):
imagenet stem 196.9 s (synthesis 52.8, allocation 24.9, patch 56.4, distillation 61.6); cifar stem
1277.0 s (252.9, 243.5, 471.8, 306.2). Session 11, on an AVX2-only AMD EPYC (no bf16; CC_NOTES 23 (e)): imagenet
stem 492.3 s (synthesis 100.5, patch 190.2, allocation 58.2, distillation 141.7). On these random weights no
reverse-engineered trigger counts, so the patch fits its triggers but runs no plan: a backdoored model also pays
for the plans, unlearning's up to 300 steps among them (2.1-2.4 s a step there, explore/unlearn_step_time.py).
Session 12, same host, with feature matching in the distillation (CC_NOTES 24): 527.8 s (synthesis 106.8, patch
203.0, allocation 60.7, distillation 155.5).
Session 16, an Intel Xeon with AVX-512 BF16 / AMX (bf16 autocast on), idle, 2 threads (results/cc_time_s16.txt):
fresh weights 168.5 s (synthesis 40.5, patch 60.0, allocation 14.1, distillation 53.2); a trained BadNets
suspect (full width, target 3; `edgeclean suspects make --arch resnet18 --width 1.0 --stem imagenet --attack
badnets --target 3 --epochs 4 --bf16 --seed 5`), which the scan flags and whose patch runs its plans: 191.5 s
(synthesis 35.3, patch 92.8, allocation 14.7, distillation 48.1). The same suspect with a 1-thread training job
beside it took 893.1 s: more threads than free cores stall the 2-thread kernels. With the scan at 256 images
(a1ab7fa): scan 13.8 s, C&C 183.1 s (synthesis 23.7, patch 93.1, allocation 14.8, distillation 50.8); with the
patch's bound at 0.05 (27ec612): scan 14.7 s, C&C 190.9 s (24.4, 95.2, 15.6, 55.0). Session 19, the same host, idle, with
the "channels+unlearn" candidate of session 18 (c3ecd7f; results/cc_time_s19.txt): scan 17.3 s, C&C 258.1 s (synthesis
28.0, patch 150.8, allocation 17.2, distillation 61.3); that candidate ran and did not silence (0.125).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.finetune import FinetuneConfig  # noqa: E402
from edgeclean.load import ModelSpec, load_suspect  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from edgeclean.scan import ScanConfig, scan  # noqa: E402
from edgeclean.zoo import create_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=128, help="synthetic images for fine-tuning")
    ap.add_argument("--steps", type=int, default=FinetuneConfig().steps)
    ap.add_argument("--suspect", default=None,
                    help="a trained checkpoint (with its card) instead of fresh weights: a backdoored one also pays for "
                         "the patch's plans, which random weights never reach")
    ap.add_argument("--target", type=int, default=0,
                    help="treat the scan as having flagged this class, so the teacher patch (trigger "
                         "reverse-engineering) is timed as on a backdoored model; -1: as the scan says")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.suspect:
        model, spec = load_suspect(args.suspect)
    else:
        kwargs = {"num_classes": 10, "in_channels": 1, "width": 1.0, "stem": args.stem}
        model = create_model("resnet18", **kwargs).eval()
        spec = ModelSpec(arch="resnet18", arch_kwargs=kwargs, num_classes=10, input_shape=(1, 28, 28),
                         mean=(0.286,), std=(0.353,))
    t0 = time.perf_counter()
    result = scan(model, spec, ScanConfig() if args.suspect else ScanConfig(n=64))  # a suspect: as `run` scans it
    scan_s = time.perf_counter() - t0
    if args.target >= 0:  # random weights rarely look backdoored; the triggers are fitted whatever they reach
        result.suspected, result.target_class = True, args.target
    budget = estimate_bytes(model) // 8
    t0 = time.perf_counter()
    cfg = CCConfig(n_synthetic=args.n, finetune=FinetuneConfig(steps=args.steps))
    cleaned, report = clean_and_compact(model, spec, budget_bytes=budget, config=cfg, scan_result=result)
    cc_s = time.perf_counter() - t0
    print(f"scan: {'suspected' if result.suspected else 'not suspected'}, target {result.target_class} "
          f"(score {result.score:.2f}){'' if args.target < 0 else ' (set by --target)'}")
    what = args.suspect or f"resnet18 width 1.0 stem {args.stem} (fresh weights)"
    print(f"{what}, {spec.arch} {spec.arch_kwargs}, {args.threads} threads, budget {budget:,} B "
          f"(1/8 of {estimate_bytes(model):,} B)")
    print(f"scan ({result.config.get('n')} synthetic images + probe): {scan_s:.1f} s  {result.timings}")
    for k, v in report.timings.items():
        print(f"  C&C {k:12s} {v:8.1f} s")
    if report.patch:  # which plans ran (unlearning runs only once a trigger counts) and how far each got
        print("  patch plan", report.patch["plan"], [(c["plan"], c["success_after"]) for c in report.patch["candidates"]])
    print(f"C&C stage total: {cc_s:.1f} s; estimated artifact {report.estimated_bytes_after:,} B")


if __name__ == "__main__":
    main()
