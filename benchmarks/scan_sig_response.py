"""How the SIG models answer stripes near their trigger, on synthetic images (what the grating probe relies on).

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/scan_sig_response.py --out benchmarks/results/scan_sig_response.json

For each model (default: the suite's SIG and clean models), synthesise 64 images from its BN
statistics (30 iterations, seed 0) and count the predictions per class after adding the stripes
``amp * sin(2 pi f j / W + phase)`` (constant down each column; the suite's trigger is f 6,
phase 0, amp 80/255): at the trigger's own setting, at other amplitudes, phases and frequencies,
and turned 90 degrees. The cards' targets are printed beside, never used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from edgeclean.load import input_model, load_suspect
from edgeclean.synth import SynthConfig, synthesize

ROOT = Path(__file__).resolve().parent


def stripes(h: int, w: int, f: float, phase: float, amp: float, turned: bool = False) -> torch.Tensor:
    n = h if turned else w
    v = amp * torch.sin(2 * math.pi * f * torch.arange(n, dtype=torch.float32) / n + phase)
    return v[:, None].expand(h, w) if turned else v.expand(h, w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = [Path(p) for p in args.paths] or [ROOT / "suspects" / f"{m}.pt" for m in
                                              ("resnet18_sig", "vgg11_sig", "resnet18_clean", "vgg11_clean")]
    settings = ([("amp", a, 6, 0.0, False) for a in (40 / 255, 60 / 255, 80 / 255)]
                + [("phase", 80 / 255, 6, p, False) for p in (0.5, 1.0, 1.5, 2.0, 3.0)]
                + [("freq", 80 / 255, f, 0.0, False) for f in (4, 5, 7, 8)]
                + [("turned", 80 / 255, 6, 0.0, True)])
    rows = []
    for path in paths:
        card = json.loads(path.with_suffix(".json").read_text())
        model, spec = load_suspect(path)
        model.eval()
        x = synthesize(model, spec, 64, SynthConfig(iterations=30, seed=0))
        net = input_model(model, spec)
        _, h, w = spec.input_shape
        row = {"model": path.stem, "target": card.get("target"), "runs": []}
        with torch.no_grad():
            row["clean"] = torch.bincount(net(x).argmax(1), minlength=spec.num_classes).tolist()
            for kind, amp, f, phase, turned in settings:
                pred = net((x + stripes(h, w, f, phase, amp, turned)).clamp(0, 1)).argmax(1)
                row["runs"].append({"vary": kind, "amp": round(amp, 4), "f": f, "phase": phase, "turned": turned,
                                    "counts": torch.bincount(pred, minlength=spec.num_classes).tolist()})
        rows.append(row)
        print(f"{row['model']:<16} target {row['target']}  clean {row['clean']}")
        for r in row["runs"]:
            print(f"   {r['vary']:<6} amp {r['amp']:.3f} f {r['f']} phase {r['phase']:.1f}{' turned' if r['turned'] else ''}: {r['counts']}")
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"load": round(os.getloadavg()[0], 1), "rows": rows}, indent=1) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
