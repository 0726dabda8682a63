import subprocess
import sys

import pytest
import torch


def run_cli(*args, cwd=None, timeout=300):
    """Run the real ``edgeclean`` CLI in a subprocess: real exit codes, real stderr."""
    return subprocess.run(
        [sys.executable, "-m", "edgeclean.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(result, *needles):
    """Bad input: exit 2, exactly one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


HIDDEN_NET = '''
import torch
from torch import nn


class HiddenNet(nn.Module):
    """A CNN whose bytes are mostly one hidden Linear (flatten to dense), as many small CNNs are."""

    def __init__(self, num_classes=4, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
'''


@pytest.fixture
def hidden_net_arch(tmp_path):
    """``--arch`` of a user net (a file in ``tmp_path``) whose bytes are mostly one hidden Linear."""
    (tmp_path / "hiddennet.py").write_text(HIDDEN_NET)
    return f"{tmp_path / 'hiddennet.py'}:HiddenNet"


@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
