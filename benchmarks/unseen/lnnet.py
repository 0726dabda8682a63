"""A fifth user architecture, ConvNeXt-style and without BatchNorm: a patchify stem, depthwise 7x7 convs, LayerNorm
over channels and the pointwise MLP as nn.Linear layers on NHWC tensors. Used with random weights only, to run the
pipeline's mechanics (export, byte model, int8) on such a graph (CC_NOTES 32 (k)):

    python benchmarks/unseen/lnnet.py ln.pt      # seeded random weights + a card with the spec
    edgeclean run ln.pt --budget 200KB
"""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LNNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 48, 2, stride=2)
        self.b1 = Block(48)
        self.down = nn.Conv2d(48, 96, 2, stride=2)
        self.b2 = Block(96)
        self.b3 = nn.Conv2d(96, 96, 3, padding=1)
        self.norm = nn.LayerNorm(96)
        self.head = nn.Linear(96, num_classes)

    def forward(self, x):
        x = self.b3(self.b2(self.down(self.b1(self.stem(x)))))
        return self.head(self.norm(x.mean((2, 3))))


if __name__ == "__main__":
    import json
    import os
    import sys

    torch.manual_seed(0)
    out = sys.argv[1]
    torch.save(LNNet().state_dict(), out)
    spec = {"arch": os.path.abspath(__file__) + ":LNNet", "num_classes": 10, "input_shape": [1, 28, 28],
            "mean": [0.286], "std": [0.353]}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"spec": spec}, f, indent=1)
