"""A user's own architecture (not in edgeclean's zoo): SiLU stem, a residual block, a depthwise-separable
block, a biased conv without BN, and a two-layer MLP head with dropout."""
import torch
from torch import nn


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        return torch.relu(x + self.bn_b(self.b(y)))


class UserNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.SiLU(),
        )
        self.res = Res(64)
        self.sep = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
            nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6(),
        )
        self.down = nn.Conv2d(128, 192, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(192, 96), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(96, num_classes))

    def forward(self, x):
        x = self.sep(self.res(self.features(x)))
        x = torch.relu(self.down(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.head(x)
