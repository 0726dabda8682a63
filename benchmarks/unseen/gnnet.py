"""A third user architecture, with no BatchNorm at all: GroupNorm and GELU throughout, a residual block,
average pooling and a Linear classifier. C&C's synthetic images normally match BatchNorm statistics; this
net has none, so it exercises the fallback (``SynthConfig.no_bn``)."""
import torch
from torch import nn


def conv_gn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.GELU())


class GNNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = conv_gn(in_channels, 32)
        self.down1 = conv_gn(32, 64, stride=2)
        self.block = nn.Sequential(conv_gn(64, 64), nn.Conv2d(64, 64, 3, padding=1, bias=False),
                                   nn.GroupNorm(8, 64))
        self.down2 = conv_gn(64, 128, stride=2)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.down1(self.stem(x))
        x = nn.functional.gelu(x + self.block(x))
        x = nn.functional.avg_pool2d(self.down2(x), 7)
        return self.classifier(torch.flatten(x, 1))
