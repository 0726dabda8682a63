"""How far is a cleaned student's backdoor from coming back? Add delta to its target logit and watch CA, ASR and
the target's recall on the full test set (evaluation only: nothing here feeds the cleaning).

    OMP_NUM_THREADS=1 python benchmarks/explore/target_shift.py STUDENT.safetensors [...] [--deltas 0 0.5 1 2]

STUDENT: a student saved by ``explore/alloc.py --save DIR`` (its card carries the suspect's attack and target).
Also printed, data-free: the share of the suspect's synthetic images (``case.images()``, seed 1) that the suspect
and the student put in the target class.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from export_suspects import load_cleaned  # noqa: E402
from edgeclean.attacks import poisoned_test_set  # noqa: E402
from edgeclean.load import input_model  # noqa: E402


def logits(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)]).numpy()


ap = argparse.ArgumentParser()
ap.add_argument("students", nargs="+")
ap.add_argument("--suspects", default="benchmarks/suspects", help="folder of the suspects the students came from")
ap.add_argument("--deltas", nargs="+", type=float, default=[0, 0.5, 1, 1.5, 2, 3])
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.students:
    stem = Path(path).with_suffix("")
    card = json.loads(stem.with_suffix(".json").read_text())
    target = card.get("target")
    if target is None:
        print(stem.name, "has no target: skipped")
        continue
    case = Case(Path(args.suspects) / f"{stem.name}.pt", n_test=10000)
    student = input_model(*load_cleaned(stem)).eval()
    suspect = input_model(case.model, case.spec).eval()
    poisoned = poisoned_test_set(case.test, case.attack, target, case.params)
    clean, trig, y = logits(student, case.test.x), logits(student, poisoned.x), case.test.y.numpy()
    synth = case.images()  # raw-space synthetic images of the suspect
    print(stem.name, f"target {target}: synthetic images put in the target by the suspect "
          f"{np.mean(logits(suspect, synth).argmax(1) == target):.3f}, by the student {np.mean(logits(student, synth).argmax(1) == target):.3f}")
    for d in args.deltas:
        shift = np.zeros(clean.shape[1], dtype=clean.dtype)
        shift[target] = d
        pred = (clean + shift).argmax(1)
        print(f"  delta {d:g}: CA {100 * np.mean(pred == y):.1f} ASR {100 * np.mean((trig + shift).argmax(1) == target):.1f} "
              f"target recall {np.mean(pred[y == target] == target):.3f}", flush=True)
