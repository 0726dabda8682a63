"""The scan's verdict on user nets at several seeds, one line each (the default ScanConfig; a net without BatchNorm
is judged by its universal gap, scan.NO_BN_GAP_THRESHOLD).

    OMP_NUM_THREADS=1 python benchmarks/unseen/scan_seeds.py gn_frame_t2.pt gn_clean.pt --seeds 0 1 2 [--images 16]
    OMP_NUM_THREADS=1 python benchmarks/unseen/scan_seeds.py shoe_clean.pt shoe_diag_t1.pt --class-prior 0.7,0.3

``--images N``: the universal probes of a net without BatchNorm on N images instead of the default's.
``--class-prior``: each class's share of the training data (edgeclean scan --class-prior), for every model given.
``--judge-two-classes``: give two-class nets a verdict as any other (``ScanConfig.judge_two_classes``; off in edgeclean).
``--threads N``: torch threads (default 1; a borderline verdict can depend on it, CC_NOTES 33 (i)).
``--masks [IMAGES,STEPS]``: the smallest-mask probe (``ScanConfig.mask``) at these settings (bare: 64,400, the default)
on every net, above ``ScanConfig.mask_max_macs`` too; without it the default scan runs it where it is cheap enough.
Printed as the smallest class, its mask over the runner-up's (``scan.mask_ratio``) and every class's size, or why
the probe was skipped.
"""
import argparse
import time
from dataclasses import replace

import torch

from edgeclean import load_suspect
from edgeclean.probe import MaskProbeConfig
from edgeclean.scan import ScanConfig, scan, with_masks


def main(paths, seeds, images=None, class_prior=None, judge_two_classes=False, threads=1, masks=None) -> None:
    torch.set_num_threads(threads)
    base = ScanConfig(judge_two_classes=judge_two_classes)
    if masks:
        n, steps = (int(v) for v in masks.split(","))
        base = with_masks(replace(base, mask=MaskProbeConfig(images=n, steps=steps)), "on")
    if images:
        base = replace(base, universal_no_bn=tuple(replace(u, images=images) for u in base.universal_no_bn))
    for seed in seeds:
        for path in paths:
            model, spec = load_suspect(path, class_prior=class_prior)
            t0 = time.time()
            r = scan(model, spec, replace(base, seed=seed))
            gap = "-" if r.universal_gap is None else f"{r.universal_gap:.3f}"
            said = "SUSPECTED" if r.suspected else "inconcl." if r.inconclusive else "clean"
            ratio = "-" if r.softmax_ratio is None else f"{r.softmax_ratio:.3f}"
            mask = f" mask skipped: {r.mask_skipped}" if r.mask_skipped else "" if r.mask_sizes is None else \
                f" mask {r.mask_target} ratio {r.mask_ratio:.2f} sizes {[round(v, 1) for v in r.mask_sizes]} ({r.timings['mask_s']:.0f} s)"
            print(f"seed {seed} {path:28s} {said:9s} target {r.target_class} "
                  f"score {r.score:.2f} ratio {ratio} universal gap {gap} ({r.synthesis['method']}; {r.basis}) {time.time() - t0:.0f} s"
                  + mask, flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--class-prior", default=None)
    ap.add_argument("--judge-two-classes", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--masks", nargs="?", const="64,400", default=None)
    a = ap.parse_args()
    main(a.models, a.seeds, a.images, a.class_prior, a.judge_two_classes, a.threads, a.masks)
