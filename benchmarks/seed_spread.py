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


def cc_cells(folder: Path) -> dict[str, dict]:
    """suspect -> its C&C cell, read once per folder."""
    cells = (json.loads(p.read_text()) for p in sorted((folder / "table1").glob("*__cc.json")))
    return {c["suspect"]: c for c in cells}


def main(folders: list[str]) -> int:
    by_folder = {Path(f): cc_cells(Path(f)) for f in folders}
    suspects = sorted({s for cells in by_folder.values() for s in cells})
    seeds = [",".join(map(str, sorted({c["seed"] for c in cells.values()}))) for cells in by_folder.values()]
    print("C&C at 1/8, CA after / ASR after (%), full test split; Δ CA against the suspect's own fp32 ONNX.\n")
    print(f"| suspect | {' | '.join(f'seed {s}' for s in seeds)} | worst ASR | worst Δ CA |")
    print("|---|" + "---|" * len(folders) + "---|---|")
    for s in suspects:
        shown, asr, dca = [], [], []
        for cells in by_folder.values():
            c = cells.get(s)
            if c is None:
                shown.append("—")
                continue
            a = c.get("asr")
            shown.append(f"{c['ca'] * 100:.1f} / {a * 100:.1f}" if a is not None else f"{c['ca'] * 100:.1f}")
            if a is not None:
                asr.append(a * 100)
            dca.append((c["ca"] - c["ref"]["ca"]) * 100)
        print(f"| {s} | {' | '.join(shown)} | {f'{max(asr):.1f}' if asr else '—'} | {min(dca):+.1f} |")
    for f, cells in by_folder.items():
        print(f"\n{f}: commit(s) {', '.join(sorted({c['commit'] for c in cells.values()}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
