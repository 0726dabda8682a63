"""The scan's weaker evidence on one suspect, to see why a backdoor is missed (CC_NOTES section 20).

    OMP_NUM_THREADS=1 python benchmarks/unseen/scan_probes.py SUSPECT.pt [--real] [--patch-steps 100 300]

Prints, per probe, each class's figure and the top class: Neural-Cleanse masks (40 steps / 16 images,
100 steps / 32 images: the smallest mask and its anomaly index), L-inf universal perturbations at
eps 0.02-0.1 (32 images, 10 steps), and the small-patch probe (2 % of the image) on the scan's 128
synthetic images or, with --real, on 128 real test images (diagnosis only: the tool never sees data).
"""
import argparse

import torch

from edgeclean.data import load_fashion_mnist
from edgeclean.load import input_model, load_suspect
from edgeclean.probe import (PatchProbeConfig, TriggerConfig, frozen_eval, low_outlier_index, patch_probe,
                             trigger_probe, universal_perturbation)
from edgeclean.scan import ScanConfig, scan, universal_gap


def show(name: str, values, top=None, extra="") -> None:
    top = max(range(len(values)), key=lambda c: values[c]) if top is None else top
    print(f"{name:34s} top {top}  {[round(float(v), 2) for v in values]} {extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suspect")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--patch-steps", type=int, nargs="+", default=[100])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, spec = load_suspect(args.suspect)
    model.eval()
    net = input_model(model, spec)
    images = scan(model, spec, ScanConfig(seed=0, universal=None, grating=None)).images  # the scan's synthetic set
    k = spec.num_classes
    for images_n, steps in ((16, 40), (32, 100)):
        t = trigger_probe(model, spec, images, TriggerConfig(images=images_n, steps=steps))
        top, index = low_outlier_index(t.mask_l1)
        show(f"neural cleanse {steps} steps, mask px", t.mask_l1, top, f"anomaly index {index:.2f}")
    with frozen_eval(model):
        for eps in (0.02, 0.03, 0.05, 0.1):
            _, success = universal_perturbation(net, images[:32], list(range(k)), eps, 10)
            show(f"universal L-inf {eps}", success.tolist(), extra=f"gap {universal_gap(success.tolist())[1]:.3f}")
        pool = {"synthetic": images}
        if args.real:
            pool["real"] = load_fashion_mnist("test").x[:128]
        for name, x in pool.items():
            for steps in args.patch_steps:
                r = patch_probe(net, x, k, PatchProbeConfig(steps=steps))
                show(f"patch 2% {steps} steps, {name}", r.shares, extra=f"gap {universal_gap(r.shares)[1]:.3f}")


if __name__ == "__main__":
    main()
