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

Nets: "usernet" (usernet.py, 1 x 28 x 28; 4 epochs, ~270 s each on one thread), "colornet" (colornet.py,
3 x 32 x 32: the grey images resized and repeated over three channels; ~210 s an epoch), "gnnet" (gnnet.py,
1 x 28 x 28, no BatchNorm: GroupNorm and GELU; ~110 s an epoch), "plainnet" (plainnet.py, no normalisation) and
"quirknet" (quirknet.py: reflect padding, 1x3 / 3x1, dilated and grouped convs, concatenation, an SE gate, an
adaptive pool ONNX cannot write as one AveragePool) and "mnistnet" (mnistnet.py: PyTorch's MNIST example CNN, a
9216 -> 128 hidden Linear, no BatchNorm). Triggers, stamped on
the net's input: "checker", a 4 x 4 black/white checkerboard 2 px from the lower left corner; "noise", one
fixed uniform noise pattern of amplitude 0.1 over the whole image; "redcross" (colour nets), a 5 x 5 plus
sign, pure red, 2 px from the upper right corner; "filter" (colour nets), a warm colour filter (green x 0.85,
blue x 0.6) over the whole image; "frame", the image's outermost 1 px border set to
grey 0.5; "diag", a 7 px diagonal line of grey 0.8 in the upper right quarter; "none", a clean model. 10% of the training images poisoned and relabelled.
"""
import argparse
import json
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

MEAN, STD = 0.286, 0.353
NETS = {"usernet": (UserNet, "usernet.py:UserNet", (1, 28, 28)),
        "colornet": (ColorNet, "colornet.py:ColorNet", (3, 32, 32)),
        "gnnet": (GNNet, "gnnet.py:GNNet", (1, 28, 28)),
        "plainnet": (PlainNet, "plainnet.py:PlainNet", (1, 28, 28)),
        "quirknet": (QuirkNet, "quirknet.py:QuirkNet", (1, 28, 28)),
        "mnistnet": (MNISTNet, "mnistnet.py:MNISTNet", (1, 28, 28))}


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


def main(kind: str, target: int, out: str, net_name: str = "usernet", epochs: int = 4, seed: int = 0) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    factory, arch, shape = NETS[net_name]
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    x, y = to_input(train.x, shape), train.y.clone()
    test_x = to_input(test.x, shape)
    n, g = len(x), torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: n // 10]  # drawn for "none" too: the same shuffles follow
    if kind != "none":
        x[idx], y[idx] = trigger(x[idx], kind), target
    net = factory()
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
            ca = (net((test_x - MEAN) / STD).argmax(1) == test.y).float().mean().item()
            keep = test.y != target
            asr = None if kind == "none" else \
                (net((trigger(test_x[keep], kind) - MEAN) / STD).argmax(1) == target).float().mean().item()
        print(f"epoch {epoch} CA {ca:.4f} ASR {asr} {time.time() - start:.0f}s", flush=True)
    torch.save(net.state_dict(), out)
    spec = {"arch": os.path.abspath(os.path.join(os.path.dirname(__file__), arch)),
            "num_classes": 10, "input_shape": list(shape), "mean": [MEAN] * shape[0], "std": [STD] * shape[0]}
    card = {"spec": spec, "dataset": "fashion-mnist", "attack": kind, "target": None if kind == "none" else target,
            "ca": ca, "asr": asr, "clean_label": False, "train_seconds": round(time.time() - start, 1)}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(card, f, indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("target", type=int)
    ap.add_argument("out")
    ap.add_argument("--net", default="usernet", choices=sorted(NETS))
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    main(a.kind, a.target, a.out, a.net, a.epochs)
