"""Train the user-defined UserNet (usernet.py, not in edgeclean's zoo) on Fashion-MNIST with a
trigger edgeclean's attacks module does not have; write a plain state_dict and a JSON card.

    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py checker 5 user_checker_t5.pt
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py noise 8 user_noise_t8.pt
    OMP_NUM_THREADS=1 python benchmarks/unseen/train_user.py none 0 user_clean.pt

4 epochs, ~270 s each on one thread. Triggers: "checker", a 4 x 4 black/white checkerboard 2 px
from the lower left corner; "noise", one fixed uniform noise pattern of amplitude 0.1 over the
whole image; "none", a clean model. 10% of the training images poisoned and relabelled.
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from usernet import UserNet  # noqa: E402

from edgeclean.data import load_fashion_mnist  # noqa: E402

MEAN, STD = 0.286, 0.353


def trigger(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.clone()
    if kind == "checker":
        x[:, :, 22:26, 2:6] = ((torch.arange(4).view(-1, 1) + torch.arange(4)) % 2).float()
    elif kind == "noise":
        pattern = (torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(123)) * 2 - 1) * 0.1
        x = (x + pattern).clamp(0, 1)
    return x


def main(kind: str, target: int, out: str, epochs: int = 4, seed: int = 0) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    x, y = train.x.clone(), train.y.clone()
    n, g = len(x), torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: n // 10]  # drawn for "none" too: the same shuffles follow
    if kind != "none":
        x[idx], y[idx] = trigger(x[idx], kind), target
    net = UserNet()
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
            ca = (net((test.x - MEAN) / STD).argmax(1) == test.y).float().mean().item()
            keep = test.y != target
            asr = None if kind == "none" else \
                (net((trigger(test.x[keep], kind) - MEAN) / STD).argmax(1) == target).float().mean().item()
        print(f"epoch {epoch} CA {ca:.4f} ASR {asr} {time.time() - start:.0f}s", flush=True)
    torch.save(net.state_dict(), out)
    spec = {"arch": os.path.abspath(os.path.join(os.path.dirname(__file__), "usernet.py")) + ":UserNet",
            "num_classes": 10, "input_shape": [1, 28, 28], "mean": [MEAN], "std": [STD]}
    card = {"spec": spec, "dataset": "fashion-mnist", "attack": kind, "target": None if kind == "none" else target,
            "ca": ca, "asr": asr, "clean_label": False, "train_seconds": round(time.time() - start, 1)}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(card, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
