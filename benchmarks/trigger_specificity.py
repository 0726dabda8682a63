"""How backdoor-specific are the triggers the teacher patch reverse-engineers (``unlearn.reverse_trigger``)?

For each suspect, optimise on 128 synthetic images a mask+pattern trigger and additive L-inf triggers
(eps 0.05 / 0.1 / 0.15 / 0.2) towards the backdoor's target class AND towards the next class (no
backdoor), and report the success on 128 held-out synthetic images and the trigger size. A trigger
that reaches a clean class as easily as the target is a universal adversarial perturbation, not the
backdoor; pruning against it costs clean accuracy. This chose ``PatchConfig.eps`` (CC_NOTES section 7).

    OMP_NUM_THREADS=1 python benchmarks/trigger_specificity.py models/demo_badnets_resnet18.pt \
        benchmarks/suspects/resnet18_blended.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.cc import CCConfig  # noqa: E402
from edgeclean.finetune import FinetuneConfig  # noqa: E402
from edgeclean.load import input_model, load_suspect, read_card  # noqa: E402
from edgeclean.unlearn import PatchConfig, reverse_trigger, success_rate  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cc_variants import data_for  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("suspects", nargs="+")
    ap.add_argument("--eps", default="0.05,0.1,0.15,0.2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for s in args.suspects:
        path = Path(s)
        card = read_card(path)
        target = card.get("target") or 0
        model, spec = load_suspect(path)
        net = input_model(model.eval(), spec)
        images = data_for(path, model, spec, 512, CCConfig(n_synthetic=512, finetune=FinetuneConfig(adv_weight=1.0)))["images"]
        fit, held = images[:128], images[128:256]
        for c in (target, (target + 1) % spec.num_classes):
            cells = []
            for kind, eps in [("mask", None)] + [("additive", float(e)) for e in args.eps.split(",")]:
                trig = reverse_trigger(net, fit, c, kind, PatchConfig(eps=eps or PatchConfig.eps, steps=150))
                label = "mask" if kind == "mask" else f"L-inf {eps}"
                cells.append(f"{label}: {success_rate(net, held, trig):.2f} (size {trig.size():.2f})")
            role = "target" if c == target else "clean class"
            print(f"{path.stem} [{card.get('attack')}] class {c} ({role}): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
