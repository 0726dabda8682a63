"""CC_NOTES 29 (a): which convolutions get a wrong weight gradient under CPU bf16 autocast.

    OMP_NUM_THREADS=1 python benchmarks/explore/bf16_conv_grad.py [--reps 10]

For a grid of kernel, input size, stride, padding and groups: the weight gradient of ``y.pow(2).sum()`` under bf16
autocast against the same computed in fp32 from bf16-rounded input and weight (so only the kernel's arithmetic
differs). A case counts as wrong when a gradient is non-finite or more than 5 % off (relative L2); bf16 rounding
alone gives < 1 %. Then whether ``finetune.bf16_bad_grad`` (the rule by which training falls back to fp32) covers
every wrong case, and how many cases it flags needlessly. Forward outputs and input gradients are checked the same way.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean.finetune import bf16_bad_grad, native_bf16  # noqa: E402


def off(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.isfinite(a).all() or float((a - b).norm() / b.norm().clamp_min(1e-12)) > 0.05


def case(c: int, k: int, hw: int, stride: int, pad: int, groups: int, reps: int) -> tuple[int, int, int, int]:
    """(weight-grad wrong, of those not finite, output wrong, input-grad wrong) out of ``reps`` random draws."""
    conv = torch.nn.Conv2d(c, c, k, stride, pad, groups=groups, bias=False)
    ref = torch.nn.Conv2d(c, c, k, stride, pad, groups=groups, bias=False)
    ref.weight.data = conv.weight.data.bfloat16().float()
    wrong = [0, 0, 0, 0]
    for _ in range(reps):
        x0 = torch.randn(16, c, hw, hw)
        xr = x0.bfloat16().float().requires_grad_(True)
        yr = ref(xr)
        yr.pow(2).sum().backward()
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().pow(2).sum().backward()
        wrong[0] += off(conv.weight.grad, ref.weight.grad)
        wrong[1] += not torch.isfinite(conv.weight.grad).all()
        wrong[2] += off(y.float(), yr)
        wrong[3] += off(x.grad, xr.grad)
        conv.weight.grad = ref.weight.grad = None
    return tuple(wrong)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, native bf16: {native_bf16()}")
    misses = idle = cases = 0
    for k, hw, stride, pad, groups in itertools.product((1, 3, 5), (1, 2, 3, 4, 6), (1, 2, 3, 4), (0, 1, 2), (1, 16)):
        if hw + 2 * pad < k:
            continue  # no output
        w, nf, f, g = case(16, k, hw, stride, pad, groups, args.reps)
        conv = torch.nn.Conv2d(16, 16, k, stride, pad, groups=groups)
        rule = bf16_bad_grad(conv, (hw, hw))
        cases += 1
        misses += w > 0 and not rule
        idle += rule and w == 0
        if w or f or g or rule:
            print(f"k {k} input {hw}x{hw} stride {stride} pad {pad} groups {groups:2}: weight grad wrong {w}/{args.reps} "
                  f"({nf} not finite), "
                  f"output wrong {f}/{args.reps}, input grad wrong {g}/{args.reps}; rule says {'wrong' if rule else 'fine'}")
    print(f"{cases} cases: {misses} with a wrong weight gradient outside the rule; {idle} inside it with none in "
          f"{args.reps} draws")
    return 0


if __name__ == "__main__":
    sys.exit(main())
