"""Compression of a clean net without BatchNorm from model-inversion images of more or fewer iterations.

Inversion (``synth``'s fallback without BatchNorm) makes images the net is sure of: the more iterations, the more
confident (mean top softmax 0.85 at 5, 0.97-0.99 at 30 on CC_NOTES 32's nets). Softer images may carry more of
the teacher's knowledge into the compressed student. C&C without a target (no patch) at 1/8 of the fp32 bytes,
CA on the full Fashion-MNIST test split, per ``CCConfig.synth_iterations``.

    OMP_NUM_THREADS=1 python benchmarks/unseen/nobn_images.py gn_clean.pt plain_clean.pt --iterations 5 15 60
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_user import to_input  # noqa: E402

from edgeclean import load_suspect  # noqa: E402
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from edgeclean.synth import SynthConfig, synthesize  # noqa: E402


def accuracy(model, spec, x, y) -> float:
    net = input_model(model.eval(), spec)
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def main(paths, iterations, fraction) -> None:
    torch.set_num_threads(1)
    test = load_fashion_mnist("test")
    for path in paths:
        model, spec = load_suspect(path)
        x = to_input(test.x, spec.input_shape)
        budget = int(estimate_bytes(model, "fp32") * fraction)
        print(f"{path}: suspect CA {accuracy(model, spec, x, test.y):.4f}, budget {budget:,} B", flush=True)
        for its in iterations:
            t0 = time.time()
            probe = synthesize(model, spec, 64, SynthConfig(iterations=its, seed=1))
            with torch.no_grad():
                conf = torch.softmax(input_model(model, spec)(probe), 1).max(1).values.mean().item()
            student, _ = clean_and_compact(model, spec, budget_bytes=budget, precision="fp32",
                                           config=CCConfig(synth_iterations=its))
            print(f"  {its:3d} iterations (mean top softmax {conf:.3f}): CA {accuracy(student, spec, x, test.y):.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--iterations", type=int, nargs="+", default=[5, 15, 60])
    ap.add_argument("--fraction", type=float, default=1 / 8)
    a = ap.parse_args()
    main(a.models, a.iterations, a.fraction)
