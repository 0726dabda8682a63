"""Seconds per step of the unlearning plan (``unlearn.unlearn_stage``: batch 64, three triggers) on a full-width
ResNet-18 with the ImageNet stem, 28x28, 2 threads; random weights and triggers (the cost depends on shapes only).
CC_NOTES 23 (e).

    python benchmarks/explore/unlearn_step_time.py [--steps 20] [--stem imagenet]
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean.unlearn import PatchConfig, Trigger, unlearn_stage  # noqa: E402
from edgeclean.zoo import create_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = create_model("resnet18", num_classes=10, in_channels=1, width=1.0, stem=args.stem).eval()
images = torch.rand(384, 1, 28, 28)
triggers = [Trigger("additive", 0, 1.0, delta=0.1 * torch.randn(1, 1, 28, 28)) for _ in range(3)]
config = dataclasses.replace(PatchConfig(), unlearn_steps=args.steps, unlearn_check=10**6)  # no check: time steps only
t0 = time.perf_counter()
unlearn_stage(model, model, images, images[:128], triggers, config)
print(f"full-width resnet18, {args.stem} stem, 28x28, {args.threads} threads: "
      f"{(time.perf_counter() - t0) / args.steps:.2f} s per unlearning step (64 images, 3 triggers)")
