"""Data-free synthetic images: ZeroQ-style inversion of the BatchNorm statistics.

``synthesize(model, spec, n)`` returns ``n`` images in the raw input space [0, 1] whose feature
statistics, at every BatchNorm layer, match the layer's running mean and variance (ZeroQ,
Cai et al. CVPR 2020): the network itself remembers what its training data looked like.

The images are optimised in the *normalised* space the network sees (ZeroQ's parametrisation, so
its Adam learning rate of 0.5 keeps its meaning), clamped after every step to the box that maps
onto raw pixels in [0, 1]. An optional smoothness (total variation) prior and an optional
class-balance term (cross-entropy towards labels spread evenly over the classes, as in
DeepInversion) are available.

Models without BatchNorm have no statistics to match. ``SynthConfig.no_bn`` says what to do then:
``"error"`` raises a UserError that says so; ``"inversion"`` (the default) falls back to class-
balanced model inversion (cross-entropy towards evenly spread labels + total variation prior +
small L2 prior), which keeps the scan working on such models; the scan reports which was used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class SynthConfig:
    """How to synthesise. ZeroQ's reference is lr 0.5, 500 iterations, batch 32; the default takes
    fewer iterations because the scan must run in minutes on two CPU cores (see bench_scan.py)."""

    iterations: int = 60
    lr: float = 0.5
    batch_size: int = 32
    seed: int = 0
    tv_weight: float = 0.0  # smoothness prior on the raw image (0: pure ZeroQ)
    ce_weight: float = 0.0  # class-balance term: CE towards labels i % classes (0: pure ZeroQ)
    no_bn: str = "inversion"  # "inversion" (fallback) or "error"
    inversion_l2: float = 1e-3  # L2 prior of the no-BN fallback (on the normalised image)
    inversion_tv: float = 1e-2  # TV prior of the no-BN fallback
    progress: bool = False  # rich progress bar on stderr


@dataclass
class SynthStats:
    """How the synthesis went: the numbers that say whether the images are any good."""

    method: str  # "bn-stats" or "inversion"
    bn_layers: int
    bn_loss_start: float  # mean over layers of ||mu - running_mean|| + ||sigma - running_std||
    bn_loss_end: float
    seconds: float
    iterations: int
    history: list = field(default_factory=list)  # loss every few iterations of the first batch

    def to_dict(self) -> dict:
        return {
            "method": self.method, "bn_layers": self.bn_layers, "bn_loss_start": round(self.bn_loss_start, 5),
            "bn_loss_end": round(self.bn_loss_end, 5), "seconds": round(self.seconds, 2), "iterations": self.iterations,
        }


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers that carry running statistics (the ones inversion can match)."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.running_mean is not None and m.track_running_stats]


class BNStatHooks:
    """Forward pre-hooks that record, per BN layer, the distance of the batch statistics of its
    input to the layer's running statistics (ZeroQ's loss term)."""

    def __init__(self, layers: list[nn.Module]):
        self.losses: list[torch.Tensor] = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in layers]

    def _hook(self, module, inputs):
        x = inputs[0]
        dims = [0] + list(range(2, x.ndim))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        eps = module.eps
        loss = torch.norm(mean - module.running_mean, 2) + torch.norm(
            torch.sqrt(var + eps) - torch.sqrt(module.running_var + eps), 2
        )
        self.losses.append(loss)

    def pop(self) -> torch.Tensor:
        """Mean of the recorded per-layer losses, then clear them."""
        out = torch.stack(self.losses).mean() if self.losses else torch.zeros(())
        self.losses = []
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (a smoothness prior)."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def _norm_params(spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std of the normalised parametrisation. A model that takes raw pixels (mean 0, std 1)
    still gets a unit-scale parametrisation (0.5, 0.25), so the learning rate means the same."""
    c = spec.input_shape[0]
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, c, 1, 1)
    if bool((mean == 0).all() and (std == 1).all()):
        mean, std = torch.full_like(mean, 0.5), torch.full_like(std, 0.25)
    return mean, std


def bn_stat_loss(model: nn.Module, spec, images: torch.Tensor) -> float:
    """ZeroQ's BN-statistics loss of raw images (mean over BN layers); lower = closer to the
    training data's statistics. Used to measure synthetic data and in the tests."""
    from .load import input_model

    layers = bn_layers(model)
    if not layers:
        raise UserError("the model has no BatchNorm layers with running statistics; no BN-statistics loss")
    hooks = BNStatHooks(layers)
    try:
        with torch.no_grad():
            input_model(model, spec)(images)
        return float(hooks.pop())
    finally:
        hooks.remove()


def synthesize(
    model: nn.Module,
    spec,
    n: int,
    config: SynthConfig = SynthConfig(),
    callback: Callable[[int, int, float], None] | None = None,
    return_stats: bool = False,
):
    """``n`` synthetic images (raw input space, N x C x H x W in [0, 1]) for ``model``.

    ``callback(done_iterations, total_iterations, loss)`` is called after every step (for a UI).
    With ``return_stats`` returns ``(images, SynthStats)``.
    """
    from .load import input_model

    if n < 1:
        raise UserError(f"n={n}: ask for at least one synthetic image")
    layers = bn_layers(model)
    if not layers and config.no_bn == "error":
        raise UserError(
            "the model has no BatchNorm layers, so there are no statistics to synthesise data from; "
            "use SynthConfig(no_bn='inversion') or give a model with BatchNorm"
        )
    method = "bn-stats" if layers else "inversion"
    was_training = model.training
    model.eval()  # BN must use (and never update) its running statistics
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    net = input_model(model, spec)
    mean, std = _norm_params(spec)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    gen = torch.Generator().manual_seed(config.seed)
    batches = [min(config.batch_size, n - i) for i in range(0, n, config.batch_size)]
    total = len(batches) * config.iterations
    hooks = BNStatHooks(layers) if layers else None
    out, start_losses, end_losses, history = [], [], [], []
    start = time.perf_counter()
    bar = _bar(config.progress, total, method)
    done = 0
    try:
        for b, size in enumerate(batches):
            z = torch.randn(size, *spec.input_shape, generator=gen)
            z = torch.max(torch.min(z, hi), lo).requires_grad_(True)
            labels = (torch.arange(size) + b * config.batch_size) % spec.num_classes
            opt = torch.optim.Adam([z], lr=config.lr)
            for it in range(config.iterations):
                opt.zero_grad(set_to_none=True)
                raw = z * std + mean
                logits = net(raw)
                if hooks is not None:
                    bn = hooks.pop()
                    loss = bn
                    if config.ce_weight:
                        loss = loss + config.ce_weight * F.cross_entropy(logits, labels)
                    if config.tv_weight:
                        loss = loss + config.tv_weight * total_variation(raw)
                else:
                    bn = F.cross_entropy(logits, labels)
                    loss = bn + config.inversion_l2 * z.pow(2).mean() + config.inversion_tv * total_variation(z)
                bn_value = float(bn.detach())
                if it == 0:
                    start_losses.append(bn_value)
                if b == 0 and it % 10 == 0:
                    history.append(round(bn_value, 5))
                loss.backward()
                opt.step()
                with torch.no_grad():
                    z.copy_(torch.max(torch.min(z, hi), lo))
                done += 1
                if bar is not None:
                    bar[0].update(bar[1], advance=1, info=f"loss {bn_value:.4f}")
                if callback is not None:
                    callback(done, total, bn_value)
            with torch.no_grad():
                raw = (z * std + mean).clamp(0, 1)
                logits = net(raw)
                end_losses.append(float(hooks.pop()) if hooks is not None else float(F.cross_entropy(logits, labels)))
            out.append(raw.detach())
    finally:
        if hooks is not None:
            hooks.remove()
        if bar is not None:
            bar[0].stop()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    images = torch.cat(out)
    if not return_stats:
        return images
    stats = SynthStats(method, len(layers), sum(start_losses) / len(start_losses), sum(end_losses) / len(end_losses),
                       time.perf_counter() - start, config.iterations, history)
    return images, stats


def _bar(enabled: bool, total: int, method: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.console import Console

    progress = Progress(TextColumn(f"synthesising ({method})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                        transient=True)
    progress.start()
    return progress, progress.add_task("synth", total=total, info="")
