"""Which recorded patch choices would ``plan_rank``'s floor on unlearning move? (CC_NOTES 25 (g))

    python benchmarks/explore/rerank_plans.py 0.9 benchmarks/results/*.txt OUT/report.json ...

Every candidate list the patch recorded (alloc.py lines in the results files, the ``cc.patch`` of `run` reports) that
has an unlearning candidate is ranked twice: with no floor on unlearning (the rule before session 13) and with
``unlearn_min_unchanged`` = the given floor. Prints the lists whose choice moves.
"""
import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from edgeclean.unlearn import PatchConfig, is_silenced, plan_rank  # noqa: E402

CONFIG = PatchConfig()


def choice(cands: list[dict], floor: float) -> str:
    return max(cands, key=lambda c: plan_rank(c, is_silenced(c["plan"].split("+"), c["success_after"], CONFIG),
                                              unlearn_min_unchanged=floor))["plan"]


def candidate_lists(path: str):
    if path.endswith(".json"):
        patch = (json.load(open(path)).get("cc") or {}).get("patch") or {}
        yield path, patch.get("candidates") or []
        return
    for line in open(path):
        i = line.find("'candidates': [")
        if i < 0:
            continue
        start = line.index("[", i)
        depth = 0
        for end in range(start, len(line)):
            depth += (line[end] == "[") - (line[end] == "]")
            if depth == 0:
                break
        yield f"{os.path.basename(path)}: {line[:50].strip()}", ast.literal_eval(line[start:end + 1])


def main(floor: float, paths: list[str]) -> None:
    seen = moved = 0
    for path in paths:
        for where, cands in candidate_lists(path):
            if not any("unlearn" in c["plan"].split("+") for c in cands):
                continue
            seen += 1
            before, after = choice(cands, 0.0), choice(cands, floor)
            if before != after:
                moved += 1
                print(f"{where}: {before} -> {after}",
                      [(c["plan"], c["success_after"], c["unchanged"]) for c in cands])
    print(f"{seen} recorded lists with an unlearning candidate; {moved} choices move at floor {floor}")


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2:])
