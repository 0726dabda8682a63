"""A sixth user architecture: VGG-11 with BatchNorm as torchvision writes it (``features`` / ``avgpool`` /
``classifier``), the layout BackdoorBench's VGG checkpoints use: an adaptive pool to 7 x 7 and a classifier of
two 4096-wide hidden Linears. On a 32 x 32 input the features end at 1 x 1, which the pool repeats to 7 x 7 (not a
divisor: ONNX's AveragePool cannot write it), and the hidden Linears hold 97 % of the weights (at width 1/8).
Used with seeded random weights only, for the mechanics (export, byte model, Linear factorisation; CC_NOTES 33):

    python benchmarks/unseen/tvvgg.py tvvgg.pt      # random weights + a card with the spec (3 x 32 x 32)
    edgeclean run tvvgg.pt --budget 15MB
"""
import torch
from torch import nn

CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class TVVGG(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width=0.125):
        super().__init__()
        layers, c = [], in_channels
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v * width), 3, padding=1), nn.BatchNorm2d(int(v * width)), nn.ReLU(True)]
                c = int(v * width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(c * 49, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


if __name__ == "__main__":
    import json
    import os
    import sys

    torch.manual_seed(0)
    out = sys.argv[1]
    net = TVVGG()
    for m in net.modules():  # non-trivial BatchNorm statistics, as a trained net has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), out)
    spec = {"arch": os.path.abspath(__file__) + ":TVVGG", "num_classes": 10, "input_shape": [3, 32, 32]}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"spec": spec}, f, indent=1)
