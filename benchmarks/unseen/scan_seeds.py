"""The scan's verdict on user nets at several seeds, one line each (the default ScanConfig; a net without BatchNorm
is judged by its universal gap, scan.NO_BN_GAP_THRESHOLD).

    OMP_NUM_THREADS=1 python benchmarks/unseen/scan_seeds.py gn_frame_t2.pt gn_clean.pt --seeds 0 1 2 [--images 16]

``--images N``: the universal probes of a net without BatchNorm on N images instead of the default's.
"""
import argparse
import time
from dataclasses import replace

import torch

from edgeclean import load_suspect
from edgeclean.scan import ScanConfig, scan


def main(paths, seeds, images=None) -> None:
    torch.set_num_threads(1)
    base = ScanConfig()
    if images:
        base = replace(base, universal_no_bn=tuple(replace(u, images=images) for u in base.universal_no_bn))
    for seed in seeds:
        for path in paths:
            model, spec = load_suspect(path)
            t0 = time.time()
            r = scan(model, spec, replace(base, seed=seed))
            gap = "-" if r.universal_gap is None else f"{r.universal_gap:.3f}"
            print(f"seed {seed} {path:28s} {'SUSPECTED' if r.suspected else 'clean':9s} target {r.target_class} "
                  f"score {r.score:.2f} universal gap {gap} ({r.synthesis['method']}; {r.basis}) {time.time() - t0:.0f} s",
                  flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=None)
    a = ap.parse_args()
    main(a.models, a.seeds, a.images)
