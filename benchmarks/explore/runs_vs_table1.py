"""`run_suite.py` rows (a variant, at any seed) next to Table 1's C&C cell for the same suspect and seed (the default).

    python benchmarks/explore/runs_vs_table1.py benchmarks/results/run_suite_fp32_mcf02_s18/*.json

Table 1's C&C cell at seed S is ``results[/seedS]/table1/<suspect>__cc.json`` (the default C&C at 1/8 through
``tables.py``, which gives the same figures as ``run`` at the same seed: CC_NOTES 29 (f)). Prints a Markdown table:
CA / ASR / R-Acc and the patch (plan, BN channels, head inputs) on each side, the scan after cleaning of the run and
its gates; then the mean CA change over the rows.
"""
from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seed_spread import cc_cells  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"


@cache
def seed_cells(seed: int) -> dict[str, dict]:
    """suspect -> Table 1's C&C cell at ``seed`` (``results/`` for seed 0, ``results/seedN/`` otherwise)."""
    return cc_cells(RESULTS / ("" if seed == 0 else f"seed{seed}"))


def table1_cell(model: str, seed: int) -> dict | None:
    name = "demo" if model == "demo_badnets_resnet18" else model  # tables.py's name for models/demo_badnets_resnet18.pt
    return seed_cells(seed).get(name)


def figures(ca, asr, racc) -> str:
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in (ca, asr, racc))


def main(paths: list[str]) -> None:
    print("| suspect | seed | Table 1 C&C: CA / ASR / R-Acc, patch | run: CA / ASR / R-Acc, patch | CA change, pt | "
          "run: scan after, gates failed |")
    print("|---|---|---|---|---|---|")
    changes = []
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    for r in sorted(rows, key=lambda r: (r["model"], r.get("seed", 0))):
        seed = r.get("seed", 0)
        cell = table1_cell(r["model"], seed)
        if cell is None or r.get("ca") is None:
            continue
        p = cell["details"]["cc"].get("patch") or {}
        q = r.get("patch") or {}
        change = 100 * (r["ca"] - cell["ca"])
        changes.append(change)
        failed = ", ".join(g for g, ok in r["gates"].items() if not ok) or "-"
        print(f"| {r['model']} | {seed} | {figures(cell['ca'], cell.get('asr'), cell.get('racc'))}, "
              f"{p.get('plan', '-')} ({p.get('channels', 0)} + {p.get('pruned', 0)}) | "
              f"{figures(r['ca'], r.get('asr'), r.get('racc'))}, {q.get('plan', '-')} ({q.get('channels', 0)} + "
              f"{q.get('units', 0)}) | {change:+.1f} | {r['scan_after']}, {failed} |")
    if changes:
        print(f"\nMean CA change over {len(changes)} rows: {sum(changes) / len(changes):+.2f} pt "
              f"({min(changes):+.1f} to {max(changes):+.1f}).")


if __name__ == "__main__":
    main(sys.argv[1:])
