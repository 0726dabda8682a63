"""Compare two sets of `run_suite.py` outputs model by model: CA / ASR / R-Acc before and after, and the mean changes.

    python benchmarks/compare_runs.py --before results/run_suite_int8_s10.json results/run_suite_int8_s11_a.json \\
        results/run_suite_int8_s11_b.json results/run_suite_int8_s14.json --after results/run_suite_int8_cap125_s15.json

Where a model appears in several files of one side, the file given last wins (list them oldest first: "the latest
run of each suspect"). Only models with an artifact on both sides are compared. Prints a Markdown table; the mean
CA change and the mean CA drop from the suspects close it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def latest_rows(paths: list[str]) -> dict[str, dict]:
    """model name -> its row from the last file that scored an artifact for it."""
    rows: dict[str, dict] = {}
    for p in paths:
        for row in json.loads(Path(p).read_text())["rows"]:
            if row.get("ca") is not None:
                rows[row["model"]] = row
    return rows


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def int8_cell(row: dict) -> str:
    """The int8 artifact's gated top-1 agreement with fp32 (of how many images) and its size over the fp32 file's."""
    q = row.get("int8") or {}
    given = (q.get("int8_agreement") or {}).get("given")
    if not given or q.get("int8_size_ratio") is None:
        return "-"
    return f"{100 * given['top1_agreement']:.1f} % of {given['samples']}, {q['int8_size_ratio']:.3f}"


def compare(before: dict[str, dict], after: dict[str, dict]) -> tuple[list[str], dict]:
    """Markdown lines and the summary figures (in points) for the models on both sides."""
    names = sorted(set(before) & set(after))
    lines = ["| model | before: CA / ASR / R-Acc | after: CA / ASR / R-Acc | CA change, pt | CA drop from suspect, pt "
             "| after: int8 agreement, int8 / fp32 bytes | after: gates failed |",
             "|---|---|---|---|---|---|---|"]
    changes, drops = [], []
    for n in names:
        b, a = before[n], after[n]
        change = 100 * (a["ca"] - b["ca"])
        drop = 100 * (a["suspect_ca"] - a["ca"])
        changes.append(change)
        drops.append(drop)
        lines.append(f"| {n} | {pct(b['ca'])} / {pct(b.get('asr'))} / {pct(b.get('racc'))} | "
                     f"{pct(a['ca'])} / {pct(a.get('asr'))} / {pct(a.get('racc'))} | {change:+.1f} | {drop:.1f} | "
                     f"{int8_cell(a)} | {', '.join(k for k, ok in a.get('gates', {}).items() if not ok) or '-'} |")
    summary = {"models": len(names),
               "mean_ca_change_pt": round(sum(changes) / len(changes), 2) if names else None,
               "ca_change_range_pt": [round(min(changes), 2), round(max(changes), 2)] if names else None,
               "mean_ca_drop_after_pt": round(sum(drops) / len(drops), 2) if names else None}
    return lines, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", nargs="+", required=True, help="run_suite.py JSON files, oldest first")
    ap.add_argument("--after", nargs="+", required=True, help="run_suite.py JSON files, oldest first")
    args = ap.parse_args()
    lines, summary = compare(latest_rows(args.before), latest_rows(args.after))
    print("\n".join(lines))
    print(f"\n{summary['models']} models; mean CA change {summary['mean_ca_change_pt']:+.2f} pt "
          f"(range {summary['ca_change_range_pt'][0]:+.1f} to {summary['ca_change_range_pt'][1]:+.1f}); "
          f"mean CA drop from the suspects after: {summary['mean_ca_drop_after_pt']:.2f} pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
