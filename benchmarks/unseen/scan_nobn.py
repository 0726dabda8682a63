"""Data-free evidence on a net with no BatchNorm: which signal points at the backdoor's target?

Without BatchNorm the scan's images come from class-balanced model inversion (``synth``'s fallback). Its
verdict used the flip index, which on such images is uncalibrated. Here, for each model and each number of
inversion iterations (fewer = less confident images), the per-class figures of every probe edgeclean has:
universal perturbations (L-inf, the scan's settings and a larger radius), the small-patch probe and the
Neural-Cleanse mask search. Compare a backdoored net with its clean twin.

    OMP_NUM_THREADS=1 python benchmarks/unseen/scan_nobn.py gn_frame_t2.pt gn_clean.pt --iterations 5 30
"""
import argparse
import time

import torch

from edgeclean import load_suspect
from edgeclean.load import input_model
from edgeclean.probe import (PatchProbeConfig, TriggerConfig, frozen_eval, low_outlier_index, patch_probe,
                             trigger_probe, universal_perturbation)
from edgeclean.scan import universal_gap
from edgeclean.synth import SynthConfig, synthesize


def fmt(values) -> str:
    return "[" + " ".join(f"{v:.3f}" for v in values) + "]"


def main(paths, iterations, n, seed) -> None:
    torch.set_num_threads(1)
    for path in paths:
        model, spec = load_suspect(path)
        net = input_model(model.eval(), spec)
        k = spec.num_classes
        for its in iterations:
            t0 = time.time()
            images = synthesize(model, spec, n, SynthConfig(iterations=its, seed=seed))
            with torch.no_grad():
                conf = torch.softmax(net(images), 1).max(1).values.mean().item()
            print(f"{path} inversion {its} iterations: mean top softmax {conf:.3f}")
            with frozen_eval(model):
                for eps, steps in ((0.1, 5), (0.2, 20)):
                    _, success = universal_perturbation(net, images[:16], list(range(k)), eps, steps, "linf")
                    top, gap = universal_gap(success.tolist())
                    print(f"  universal eps {eps} steps {steps}: {fmt(success.tolist())}  top {top} gap {gap:.3f}")
                patch = patch_probe(net, images, k, PatchProbeConfig())
                top, gap = universal_gap(patch.shares)
                print(f"  patch probe shares: {fmt(patch.shares)}  top {top} gap {gap:.3f}")
            trig = trigger_probe(model, spec, images, TriggerConfig())
            top, index = low_outlier_index(trig.mask_l1)
            print(f"  trigger mask L1: {fmt(trig.mask_l1)}  smallest {top} index {index:.2f}")
            print(f"  trigger success: {fmt(trig.success)}  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--iterations", type=int, nargs="+", default=[5, 30])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.models, a.iterations, a.n, a.seed)
