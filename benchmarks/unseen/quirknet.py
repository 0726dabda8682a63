"""A fifth user architecture, built to carry what a user's own net may have and the zoo has not: a reflect-padded
stem conv with a bias before its BatchNorm, factorised 1x3 / 3x1 convs, a dilated conv, a channel concatenation, a
squeeze-and-excitation gate of two Linear layers, a ceil-mode max pool, a grouped conv in a residual, and an adaptive
average pool to 4 x 4 on a 7 x 7 map (not a divisor: ONNX's AveragePool cannot write it) before a two-Linear head
with BatchNorm1d and Dropout."""
import torch
from torch import nn
import torch.nn.functional as F


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x):
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class QuirkNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 24, 3, padding=1, bias=True, padding_mode="reflect")
        self.bn0 = nn.BatchNorm2d(24)
        self.sep_h = nn.Conv2d(24, 32, (1, 3), padding=(0, 1), bias=False)
        self.sep_v = nn.Conv2d(32, 32, (3, 1), padding=(1, 0), bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.dil = nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.down = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.se = SE(64)
        self.grp = nn.Conv2d(64, 64, 3, padding=1, groups=4, bias=False)
        self.bn4 = nn.BatchNorm2d(64)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 96), nn.BatchNorm1d(96), nn.ReLU(),
                                  nn.Dropout(0.2), nn.Linear(96, num_classes))

    def forward(self, x):
        x = F.hardswish(self.bn0(self.stem(x)))
        a = F.relu(self.bn1(self.sep_v(self.sep_h(x))))
        b = F.relu(self.bn2(self.dil(a)))
        x = torch.cat([a, b], 1)
        x = F.max_pool2d(F.relu(self.bn3(self.down(x))), 2, ceil_mode=True)
        x = self.se(x)
        x = F.relu(self.bn4(self.grp(x))) + x
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(x)
