"""A second user architecture, unlike the zoo and UserNet: 3 x 32 x 32 colour input, a reflect-padded
stride-2 Hardswish stem, MobileNetV2 inverted-residual blocks (1x1 expand, depthwise 3x3, linear 1x1 project),
a dilated conv, max pooling, and a 1x1 conv as the classifier (no nn.Linear) with the average taken
in forward()."""
import torch
from torch import nn


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class ColorNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, padding_mode="reflect", bias=False),
                                  nn.BatchNorm2d(32), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(32, 32, 1, 2), InvertedResidual(32, 48, 2, 4),
                                    InvertedResidual(48, 48, 1, 4))
        self.dilated = nn.Sequential(nn.Conv2d(48, 96, 3, padding=2, dilation=2, bias=False),
                                     nn.BatchNorm2d(96), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(96, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.classifier = nn.Conv2d(128, num_classes, 1)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.dilated(self.blocks(self.stem(x))), 2)
        return torch.mean(self.classifier(self.mix(x)), dim=(2, 3))
