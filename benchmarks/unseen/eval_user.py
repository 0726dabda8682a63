"""CA / ASR / target recall of a model with train_user.py's triggers, on the Fashion-MNIST test split:
an edgeclean artifact (.onnx, raw pixels), a cleaned.safetensors, or the suspect .pt (with its card).

    python benchmarks/unseen/eval_user.py export/user_checker_t5/model.onnx checker 5 [--shares]
    python benchmarks/unseen/eval_user.py export/shoe_diag_t1/model.onnx diag 1 --groups 0,1,2,3,4,6,8:5,7,9

``--shares``: also the share of the non-target test images each class gets, with the trigger and without.
``--groups``: the model was trained on groups of classes (train_user.py --groups); a .pt's card says so itself.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_user import parse_groups, select_groups, to_input, trigger  # noqa: E402

from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.load import input_model, load_suspect, read_card  # noqa: E402


def predictor(path: str):
    """(top-1 of raw [0, 1] inputs, the input shape C x H x W) of an ONNX artifact or a checkpoint."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return (lambda x: np.concatenate([sess.run(None, {name: x[i:i + 500].numpy()})[0]
                                          for i in range(0, len(x), 500)]).argmax(1)), sess.get_inputs()[0].shape[1:]
    model, spec = load_suspect(path)
    net = input_model(model.eval(), spec).eval()
    return (lambda x: torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()), spec.input_shape


def main(path: str, kind: str, target: int, shares: bool = False, groups=None) -> None:
    test = load_fashion_mnist("test")
    f, shape = predictor(path)
    if groups is None and not path.endswith(".onnx"):
        groups = read_card(Path(path)).get("label_groups")
    x, y = select_groups(to_input(test.x, shape), test.y, groups)
    y = y.numpy()
    classes = 10 if groups is None else len(groups)
    with torch.no_grad():
        ca = (f(x) == y).mean()
        keep = y != target
        hit = f(trigger(x[torch.from_numpy(keep)], kind))
        recall = (f(x[torch.from_numpy(y == target)]) == target).mean()
        untriggered = f(x[torch.from_numpy(keep)])
    print(f"{path}: CA {ca * 100:.2f} ASR {(hit == target).mean() * 100:.2f} "
          f"R-Acc {(hit == y[keep]).mean() * 100:.2f} target recall {recall * 100:.1f}")
    if shares:  # where the non-target test images go, triggered and not: a backdoor that moved shows here
        for name, pred in (("triggered", hit), ("untriggered", untriggered)):
            print(f"  {name} images per class, %: " + " ".join(f"{100 * v:.1f}" for v in np.bincount(pred, minlength=classes)
                                                               / len(pred)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("kind")
    ap.add_argument("target", type=int)
    ap.add_argument("--shares", action="store_true")
    ap.add_argument("--groups")
    a = ap.parse_args()
    main(a.path, a.kind, a.target, a.shares, parse_groups(a.groups))
