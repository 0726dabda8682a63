"""CC_NOTES 28 (e): non-finite distillation steps under bf16 autocast on a tiny random net (the setup of
tests/test_cc.py::test_feature_matching_pulls_the_students_bn_outputs_to_the_teachers), and the same conv alone.

    OMP_NUM_THREADS=1 python benchmarks/explore/bf16_nan.py [--runs 6]

Per run and setting: the steps ``finetune`` skipped as non-finite (each would have made every weight NaN before the
guard of commit f958666), whether the student's fp32 output is finite afterwards, and whether it trained in bf16
(since CC_NOTES 29 (a) it does not: its layer4 convs have a stride larger than their 1x1 input). Then the net's first conv
(1 -> 8 channels, 7x7, stride 2) alone, forward and backward under bf16 autocast, 200 times.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.finetune import FinetuneConfig, finetune, native_bf16  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from test_cc import _model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, native bf16: {native_bf16()}")
    teacher, spec = _model()
    student, _ = clean_and_compact(copy.deepcopy(teacher), spec, budget_bytes=estimate_bytes(teacher) // 3,
                                   config=CCConfig(do_finetune=False, do_scale=False))
    gen = torch.Generator().manual_seed(0)
    images, held = torch.rand(64, 1, 16, 16, generator=gen), torch.rand(32, 1, 16, 16, generator=gen)
    for bf16 in (False, True):
        for weight in (0.0, 100.0):
            cells = []
            for _ in range(args.runs):
                net = copy.deepcopy(student)
                stats = finetune(net, teacher, images, config=FinetuneConfig(steps=30, batch_size=16,
                                                                             feature_weight=weight, bf16=bf16))
                with torch.no_grad():
                    finite = bool(torch.isfinite(net(held)).all())
                cells.append(f"{stats['skipped_steps']}{'' if finite else ' (NaN output)'}")
            print(f"bf16 {bf16!s:5} feature_weight {weight:5}: skipped of 30 steps per run: {', '.join(cells)}; "
                  f"trained in bf16: {stats['bf16']}{' (' + stats['bf16_note'] + ')' if 'bf16_note' in stats else ''}")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 7, 2, 3, bias=False)
    bad = 0
    for _ in range(200):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(torch.rand(16, 1, 16, 16))
        y.float().sum().backward()
        bad += int(not torch.isfinite(y).all() or not torch.isfinite(conv.weight.grad).all())
        conv.weight.grad = None
    print(f"the first conv alone under bf16: {bad} of 200 forward/backward passes not finite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
