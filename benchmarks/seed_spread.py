"""How much Table 1's C&C cells move with the seed: the cc cells of several ``tables.py`` result folders side by side.

    OMP_NUM_THREADS=1 python benchmarks/tables.py table1 --methods cc --seed 1 --results benchmarks/results/seed1
    python benchmarks/seed_spread.py benchmarks/results benchmarks/results/seed1 [...] > benchmarks/results/seed_spread.md

The seed drives the scan's synthetic images (and so the patch's triggers), the synthesis for distillation and
the fine-tuning order. Each folder holds ``table1/<suspect>__cc.json`` cells as ``tables.py`` writes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(folder: Path, suspect: str) -> dict | None:
    path = folder / "table1" / f"{suspect}__cc.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(folders: list[str]) -> int:
    folders = [Path(f) for f in folders]
    suspects = sorted({p.name.split("__")[0] for f in folders for p in (f / "table1").glob("*__cc.json")})
    head = " | ".join(f"seed {cell_seed}" for cell_seed in (_seed(f) for f in folders))
    print("C&C at 1/8, CA after / ASR after (%), full test split; Δ CA against the suspect's own fp32 ONNX.\n")
    print(f"| suspect | {head} | worst ASR | worst Δ CA |")
    print("|---|" + "---|" * len(folders) + "---|---|")
    for s in suspects:
        cells = [cell(f, s) for f in folders]
        shown, asr, dca = [], [], []
        for c in cells:
            if c is None:
                shown.append("—")
                continue
            a = c.get("asr")
            shown.append(f"{c['ca'] * 100:.1f} / {a * 100:.1f}" if a is not None else f"{c['ca'] * 100:.1f}")
            if a is not None:
                asr.append(a * 100)
            dca.append((c["ca"] - c["ref"]["ca"]) * 100)
        print(f"| {s} | {' | '.join(shown)} | {max(asr):.1f} | {min(dca):+.1f} |" if asr else
              f"| {s} | {' | '.join(shown)} | — | {min(dca):+.1f} |")
    for f in folders:
        commits = {c["commit"] for s in suspects if (c := cell(f, s))}
        print(f"\n{f}: commit(s) {', '.join(sorted(commits))}")
    return 0


def _seed(folder: Path) -> str:
    seeds = {json.loads(p.read_text())["seed"] for p in (folder / "table1").glob("*__cc.json")}
    return ",".join(map(str, sorted(seeds)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
