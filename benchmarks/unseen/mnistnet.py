"""A seventh user architecture: the small CNN of PyTorch's MNIST example, as many users first train one. Two 3x3
convs (32 and 64 channels), a max pool, dropout, and a flatten-to-dense Linear 9216 -> 128 that holds 98 % of the
weights, then the classifier. No BatchNorm (so C&C's images come from model inversion, section 32) and no
padding. Until hidden Linears were factorised, no artifact under 1,190,280 B (the Linear at int8) was reachable for
it (CC_NOTES 33 (g))."""
import torch
from torch import nn
import torch.nn.functional as F


class MNISTNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return self.fc2(self.dropout2(x))
