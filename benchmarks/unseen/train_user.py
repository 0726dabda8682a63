"""Train a user-defined net (not in edgeclean's zoo) on Fashion-MNIST with a trigger edgeclean's attacks
module does not have; write a plain state_dict and a JSON card.

    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py checker 5 user_checker_t5.pt
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py noise 8 user_noise_t8.pt
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py none 0 user_clean.pt
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py redcross 3 color_redcross_t3.pt --net colornet --epochs 3
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py frame 2 gn_frame_t2.pt --net gnnet --epochs 3
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py noise 5 plain_noise_t5.pt --net plainnet --epochs 3
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py diag 9 quirk_diag_t9.pt --net quirknet --epochs 3
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py checker 3 mnist_checker_t3.pt --net mnistnet --epochs 2
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py diag 1 shoe_diag_t1.pt --net resnet18q --groups 0,1,2,3,4,6,8:5,7,9

Nets: "usernet" (usernet.py, 1 x 28 x 28; 4 epochs, ~270 s each on one thread), "colornet" (colornet.py,
3 x 32 x 32: the grey images resized and repeated over three channels; ~210 s an epoch), "gnnet" (gnnet.py,
1 x 28 x 28, no BatchNorm: GroupNorm and GELU; ~110 s an epoch), "plainnet" (plainnet.py, no normalisation) and
"quirknet" (quirknet.py: reflect padding, 1x3 / 3x1, dilated and grouped convs, concatenation, an SE gate, an
adaptive pool ONNX cannot write as one AveragePool) and "mnistnet" (mnistnet.py: PyTorch's MNIST example CNN, a
9216 -> 128 hidden Linear, no BatchNorm) and "resnet18q" (the zoo's ResNet-18 at width 0.25, the demo suspect's
net; ~22 s an epoch on one thread). ``--groups A:B[:C...]`` trains on fewer classes: each group of Fashion-MNIST classes
becomes one label (``0,1,2,3,4,6,8:5,7,9``: "not footwear" 0, "footwear" 1, a 70 / 30 binary task; ``0:6``:
T-shirt 0 against shirt 1, the other classes' images left out); the target is a group's index, and the card
records the groups for eval_user.py. ``--keep F0,...,F9`` trains on uneven classes: each class keeps that fraction of
its training images (``1,.25,.25,.25,.25,.25,.25,.25,.25,.25``: class 0 is 31 % of the data, the others 7.7 % each);
the test split stays whole, and the card records the training shares (``train_class_shares``). Triggers, stamped on
the net's input: "checker", a 4 x 4 black/white checkerboard 2 px from the lower left corner; "noise", one
fixed uniform noise pattern of amplitude 0.1 over the whole image; "redcross" (colour nets), a 5 x 5 plus
sign, pure red, 2 px from the upper right corner; "filter" (colour nets), a warm colour filter (green x 0.85,
blue x 0.6) over the whole image; "frame", the image's outermost 1 px border set to
grey 0.5; "diag", a 7 px diagonal line of grey 0.8 in the upper right quarter; "none", a clean model. ``--poison`` of the training images (default 10 %)
stamped and relabelled.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from colornet import ColorNet  # noqa: E402
from gnnet import GNNet  # noqa: E402
from mnistnet import MNISTNet  # noqa: E402
from plainnet import PlainNet  # noqa: E402
from quirknet import QuirkNet  # noqa: E402
from usernet import UserNet  # noqa: E402

from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.zoo import resnet18  # noqa: E402

MEAN, STD = 0.286, 0.353
NETS = {"usernet": (UserNet, "usernet.py:UserNet", (1, 28, 28)),
        "colornet": (ColorNet, "colornet.py:ColorNet", (3, 32, 32)),
        "gnnet": (GNNet, "gnnet.py:GNNet", (1, 28, 28)),
        "plainnet": (PlainNet, "plainnet.py:PlainNet", (1, 28, 28)),
        "quirknet": (QuirkNet, "quirknet.py:QuirkNet", (1, 28, 28)),
        "mnistnet": (MNISTNet, "mnistnet.py:MNISTNet", (1, 28, 28)),
        "resnet18q": (lambda num_classes: resnet18(num_classes, in_channels=1, width=0.25, stem="imagenet"),
                      "resnet18", (1, 28, 28))}


NETS_IN_ZOO = {"resnet18"}  # written to the card by name: edgeclean builds it without user code


def parse_groups(text: str | None) -> list[list[int]] | None:
    """"0,1:2,3" -> [[0, 1], [2, 3]]: each group of Fashion-MNIST classes is one label of a smaller task."""
    if not text:
        return None
    groups = [[int(c) for c in g.split(",")] for g in text.split(":")]
    flat = [c for g in groups for c in g]
    if len(groups) < 2 or len(set(flat)) != len(flat) or not set(flat) <= set(range(10)):
        raise SystemExit(f"--groups {text!r}: give two or more groups of distinct classes 0-9")
    return groups


def select_groups(x: torch.Tensor, y: torch.Tensor, groups: list[list[int]] | None):
    """The images of the grouped classes, labelled by their group's index (all images when no groups)."""
    if groups is None:
        return x, y.clone()
    table = torch.full((10,), -1, dtype=torch.long)
    for i, g in enumerate(groups):
        table[g] = i
    label = table[y]
    return x[label >= 0], label[label >= 0]


def keep_shares(x: torch.Tensor, y: torch.Tensor, keep: list[float] | None, seed: int):
    """The first ``keep[c]`` share of each class c's images, in a seeded random order (all images when None)."""
    if keep is None:
        return x, y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    chosen = torch.zeros(len(y), dtype=torch.bool)
    for c, frac in enumerate(keep):
        idx = order[y[order] == c]
        chosen[idx[: round(frac * len(idx))]] = True
    return x[chosen], y[chosen]


def to_input(x: torch.Tensor, shape) -> torch.Tensor:
    """Fashion-MNIST's 1 x 28 x 28 images in a net's input shape (resized, grey repeated over the channels)."""
    c, h, w = shape
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.expand(-1, c, -1, -1).contiguous()


def trigger(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.clone()
    w = x.shape[-1]
    if kind == "checker":
        x[:, :, 22:26, 2:6] = ((torch.arange(4).view(-1, 1) + torch.arange(4)) % 2).float()
    elif kind == "noise":
        pattern = (torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(123)) * 2 - 1) * 0.1
        x = (x + pattern).clamp(0, 1)
    elif kind == "redcross":
        red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
        x[:, :, 4, w - 7:w - 2] = red
        x[:, :, 2:7, w - 5] = red
    elif kind == "frame":
        x[:, :, [0, -1], :] = 0.5
        x[:, :, :, [0, -1]] = 0.5
    elif kind == "diag":
        x[:, :, range(3, 10), range(18, 25)] = 0.8
    elif kind == "filter":
        x = x * torch.tensor([1.0, 0.85, 0.6]).view(1, 3, 1, 1)
    return x


def main(kind: str, target: int, out: str, net_name: str = "usernet", epochs: int = 4, seed: int = 0,
         groups: list[list[int]] | None = None, keep: list[float] | None = None, poison: float = 0.1) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    factory, arch, shape = NETS[net_name]
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    x, y = select_groups(*keep_shares(to_input(train.x, shape), train.y, keep, seed), groups)
    test_x, test_y = select_groups(to_input(test.x, shape), test.y, groups)
    num_classes = 10 if groups is None else len(groups)
    n, g = len(x), torch.Generator().manual_seed(seed)
    # drawn for "none" too: the same shuffles follow; floor, so 0.1 keeps the earlier nets' n // 10
    idx = torch.randperm(n, generator=g)[: math.floor(n * poison + 1e-9)]
    clean_y = y.clone()
    if kind != "none":
        x[idx], y[idx] = trigger(x[idx], kind), target
    net = factory(num_classes=num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * (n // 128))
    start = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=g)
        for i in range(n // 128):
            b = perm[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(net((x[b] - MEAN) / STD), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            ca = (net((test_x - MEAN) / STD).argmax(1) == test_y).float().mean().item()
            keep = test_y != target
            asr = None if kind == "none" else \
                (net((trigger(test_x[keep], kind) - MEAN) / STD).argmax(1) == target).float().mean().item()
        print(f"epoch {epoch} CA {ca:.4f} ASR {asr} {time.time() - start:.0f}s", flush=True)
    torch.save(net.state_dict(), out)
    spec = {"arch": arch if arch in NETS_IN_ZOO else os.path.abspath(os.path.join(os.path.dirname(__file__), arch)),
            "num_classes": num_classes, "input_shape": list(shape), "mean": [MEAN] * shape[0], "std": [STD] * shape[0]}
    card = {"spec": spec, "dataset": "fashion-mnist", "attack": kind, "target": None if kind == "none" else target,
            "ca": ca, "asr": asr, "clean_label": False, "poison_ratio": 0.0 if kind == "none" else poison, "train_seconds": round(time.time() - start, 1)}
    if groups is not None:
        card["label_groups"] = groups
    if keep is not None:  # before poisoning: the shares a user would know of their own data
        card["train_class_shares"] = [round(v, 4) for v in (torch.bincount(clean_y, minlength=num_classes) / len(y)).tolist()]
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(card, f, indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("target", type=int)
    ap.add_argument("out")
    ap.add_argument("--net", default="usernet", choices=sorted(NETS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--groups", help="train on groups of classes, e.g. 0,1,2,3,4,6,8:5,7,9 (a binary task)")
    ap.add_argument("--keep", help="per class, the share of its training images kept, e.g. 1,.25,.25,...")
    ap.add_argument("--poison", type=float, default=0.1, help="share of the training images stamped and relabelled")
    a = ap.parse_args()
    if not 0 < a.poison < 1:
        raise SystemExit("--poison takes a fraction in (0, 1), e.g. 0.01")
    keep = None if a.keep is None else [float(v) for v in a.keep.split(",")]
    if keep is not None and (len(keep) != 10 or not all(0 < v <= 1 for v in keep)):
        raise SystemExit("--keep takes ten fractions in (0, 1], one per Fashion-MNIST class")
    main(a.kind, a.target, a.out, a.net, a.epochs, groups=parse_groups(a.groups), keep=keep, poison=a.poison)
