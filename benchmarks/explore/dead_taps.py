"""Dead kernel taps: crop the rows / columns of conv kernels that only ever multiply zero padding, then C&C.

    OMP_NUM_THREADS=1 python benchmarks/explore/dead_taps.py SUSPECT.pt [--nocrop] [--n-test 10000]

On 28x28 inputs the last stages see tiny maps: VGG-11's last two 3x3 convs run on 1x1 maps (only the centre tap
meets data) and ResNet-18's layer4 on 2x2 / 1x1 maps, about half (VGG-11: 2.31 -> 1.27 MB) to two thirds (ResNet-18:
2.81 -> 1.07 MB) of the fp32 weights. Cropping them is exact at the input size (max abs diff ~1e-6 printed). Does the
1/8 budget then buy better ranks? C&C (defaults, the card's target as the scan's, the 512 cached synthetic images as
in alloc.py) at 1/8 of the uncropped size, on the cropped model or (``--nocrop``) on the model as given; CA / ASR on
the first n test images (CC_NOTES 31 (h)).
"""
import argparse
import copy
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import Case  # noqa: E402
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.factorize import swap_modules  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402
from edgeclean.summary import forward_once  # noqa: E402


def live_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int] | None:
    """Range [lo, hi) of the kernel taps along one axis that meet an input element for some output position, on an
    input of length ``size`` (None: no tap does)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    live = [i for i in range(kernel) if any(0 <= y * stride - padding + i * dilation < size for y in range(out))]
    return (live[0], live[-1] + 1) if live else None


def crop_along(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int, int] | None:
    """(first tap kept, kernel length kept, new padding) for one axis, or None where nothing can be cropped exactly.

    Dropping the first ``lo`` taps shifts every tap's input index by ``lo * dilation``, which a padding smaller by as
    much undoes; the padding must stay non-negative, and with it the output length must not change (PyTorch pads
    both sides alike), else fewer taps are dropped."""
    live = live_taps(size, kernel, stride, padding, dilation)
    if live is None:
        return None
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    best = None
    for lo in range(live[0] + 1):
        for hi in range(kernel, live[1] - 1, -1):
            k, p = hi - lo, padding - lo * dilation
            if p < 0 or (size + 2 * p - dilation * (k - 1) - 1) // stride + 1 != out:
                continue
            if best is None or k < best[1]:
                best = (lo, k, p)
    return best if best is not None and best[1] < kernel else None


def croppable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def dead_tap_crops(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, dict]:
    """Per conv of ``model`` with dead border taps at ``input_shape`` (C, H, W; one forward pass of zeros):
    {"offset": [first row, first column kept], "kernel": [kh, kw], "padding": [ph, pw]}."""
    sizes, hooks = {}, []

    def record(name):
        def hook(module, inputs, output):  # returns None: the output stays as it is
            sizes.setdefault(name, tuple(inputs[0].shape[2:]))
        return hook

    for name, m in model.named_modules():
        if croppable(m):
            hooks.append(m.register_forward_hook(record(name)))
    forward_once(model, input_shape, hooks)
    crops = {}
    for name, (h, w) in sizes.items():
        conv = model.get_submodule(name)
        axes = [crop_along(n, k, s, p, d) for n, k, s, p, d in
                zip((h, w), conv.kernel_size, conv.stride, conv.padding, conv.dilation)]
        if all(a is None for a in axes):
            continue
        full = [(0, k, p) for k, p in zip(conv.kernel_size, conv.padding)]
        (oh, kh, ph), (ow, kw, pw) = [a or f for a, f in zip(axes, full)]
        crops[name] = {"offset": [oh, ow], "kernel": [kh, kw], "padding": [ph, pw]}
    return crops


def empty_cropped(conv: nn.Conv2d, crop: dict) -> nn.Conv2d:
    """A conv like ``conv`` with the cropped kernel size and padding (weights uninitialised)."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, tuple(crop["kernel"]), conv.stride, tuple(crop["padding"]),
                     conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
                     dtype=conv.weight.dtype)


@torch.no_grad()
def cropped_conv(conv: nn.Conv2d, crop: dict) -> nn.Conv2d:
    """``conv`` with only the kept taps: the same outputs at the input size the crop was found at."""
    new = empty_cropped(conv, crop)
    (oh, ow), (kh, kw) = crop["offset"], crop["kernel"]
    new.weight.copy_(conv.weight[:, :, oh:oh + kh, ow:ow + kw])
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new.train(conv.training)


def crop_dead_taps_(model: nn.Module, crops: dict[str, dict]) -> list[str]:
    """Swap each conv named in ``crops`` for its cropped copy, in place (torchao style); returns the names."""
    return swap_modules(model, lambda m, n: n in crops, lambda m, n: cropped_conv(m, crops[n]))


ap = argparse.ArgumentParser()
ap.add_argument("suspects", nargs="+")
ap.add_argument("--nocrop", action="store_true")
ap.add_argument("--n-test", type=int, default=10000)
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.suspects:
    case = Case(path, n_test=args.n_test)
    model = copy.deepcopy(case.model).eval()
    crops = {} if args.nocrop else dead_tap_crops(model, case.spec.input_shape)
    x = torch.rand(8, *case.spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    crop_dead_taps_(model, crops)
    with torch.no_grad():
        diff = float((model(x) - ref).abs().max())
    budget = int(estimate_bytes(case.model) / 8)
    scan = SimpleNamespace(suspected=case.target is not None, target_class=case.target, images=case.images(512),
                           adv_images=None)
    t0 = time.time()
    student, rep = clean_and_compact(model, case.spec, budget_bytes=budget, config=CCConfig(), scan_result=scan)
    print(case.path.stem, "nocrop" if args.nocrop else "cropped", crops, f"max abs diff {diff:.1e}",
          f"bytes {estimate_bytes(case.model):,} -> {estimate_bytes(model):,}, budget {budget:,}", "CA/ASR",
          case.ev(student), f"{time.time() - t0:.0f}s", "ranks",
          [tuple(l["ranks"]) if l["ranks"] else None for l in rep.layers], flush=True)
