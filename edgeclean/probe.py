"""Adversarial probing: untargeted PGD in the raw input space, and where the flips land.

A backdoor is a shortcut to its target class: small perturbations of almost any input reach it
more easily than any other class, so the predictions of untargeted adversarial examples pile up in
the target class. ``probe`` runs PGD (L-inf or L2 ball, pixels kept in [0, 1]) away from the
model's own prediction on each image and records, besides the final adversarial prediction, the
first class each sample flipped into and the size of the perturbation that did it.

``universal_perturbation(net, images, target_class, eps, steps, norm)`` finds, per target class
(all classes in one batch), one image-agnostic perturbation in an L-inf / L2 ball that sends as
many images as it can to that class, and returns it with its success rate. The scan uses the gap
between the best class's success and the runner-up's as evidence of a global-trigger shortcut
(blended, WaNet, FTrojan); on the harness suite it does not reveal SIG's target (measured at
L-inf 0.1-0.25 and L2 4: benchmarks/scan_evidence.py, results/scan_evidence.json and
scan_evidence_sig_wide.json).
``trigger_probe`` is the Neural-Cleanse variant (mask + pattern per class).
``grating_probe`` adds fixed 1-D sinusoidal gratings (no optimisation) and records, per class, the
largest share of images one grating moves into it: the scan's evidence for clean-label stripe
triggers (SIG), which the optimised perturbations above did not find (also with low-frequency DCT
and rank-1 families: benchmarks/scan_sig.py, results/scan_sig_seed0.json).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProbeConfig:
    norm: str = "linf"  # "linf" or "l2"
    eps: float = 0.1  # radius of the ball in raw pixel units ([0, 1] scale)
    steps: int = 10
    step_size: float | None = None  # default 2.5 * eps / steps (Madry et al.)
    batch_size: int = 64
    random_start: bool = False  # start at the image itself: first flips then measure distances


@dataclass
class ProbeResult:
    adv_images: torch.Tensor  # N x C x H x W, raw space
    clean_pred: torch.Tensor  # N
    adv_pred: torch.Tensor  # N
    first_flip_class: torch.Tensor  # N, -1 where the sample never flipped
    first_flip_norm: torch.Tensor  # N, perturbation norm at the first flip (inf where none)
    num_classes: int
    seconds: float

    @property
    def flipped(self) -> torch.Tensor:
        return self.adv_pred != self.clean_pred

    def histogram(self) -> list[int]:
        """Adversarial predictions per class, over all samples."""
        return torch.bincount(self.adv_pred, minlength=self.num_classes).tolist()

    def flip_histogram(self) -> list[int]:
        """Flips into each class: samples whose adversarial prediction is c and clean one is not."""
        return torch.bincount(self.adv_pred[self.flipped], minlength=self.num_classes).tolist()

    def class_stats(self) -> list[dict]:
        """Per class: clean predictions, flips into it, first flips into it and their mean norm."""
        k = self.num_classes
        clean = torch.bincount(self.clean_pred, minlength=k)
        flips = torch.bincount(self.adv_pred[self.flipped], minlength=k)
        ok = self.first_flip_class >= 0
        first = torch.bincount(self.first_flip_class[ok], minlength=k)
        rows = []
        for c in range(k):
            sel = ok & (self.first_flip_class == c)
            norms = self.first_flip_norm[sel]
            rows.append({
                "class": c, "clean": int(clean[c]), "flips_into": int(flips[c]), "first_flips_into": int(first[c]),
                "mean_flip_norm": round(float(norms.mean()), 5) if len(norms) else None,
            })
        return rows


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.ndim - 1))
    return delta * (eps / flat).clamp(max=1.0)


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, config: ProbeConfig, generator=None):
    """Untargeted PGD that maximises the cross-entropy of labels ``y``; returns
    (adversarial images, first flip class, first flip norm)."""
    if config.norm not in ("linf", "l2"):
        raise ValueError(f"norm {config.norm!r}: use 'linf' or 'l2'")
    alpha = config.step_size if config.step_size is not None else 2.5 * config.eps / config.steps
    delta = torch.zeros_like(x)
    if config.random_start:
        delta = _project(torch.empty_like(x).uniform_(-config.eps, config.eps, generator=generator), config.norm, config.eps)
        delta = (x + delta).clamp(0, 1) - x
    first_class = torch.full((len(x),), -1, dtype=torch.long)
    first_norm = torch.full((len(x),), float("inf"))
    for _ in range(config.steps):
        delta.requires_grad_(True)
        logits = net(x + delta)
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            _record(logits, y, delta, config.norm, first_class, first_norm)
            if config.norm == "linf":
                step = alpha * grad.sign()
            else:
                step = alpha * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
            delta = _project(delta + step, config.norm, config.eps)
            delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        logits = net(x + delta)
        _record(logits, y, delta, config.norm, first_class, first_norm)
    return (x + delta).detach(), logits.argmax(1), first_class, first_norm


def _record(logits, y, delta, norm, first_class, first_norm):
    pred = logits.argmax(1)
    new = (pred != y) & (first_class < 0)
    if new.any():
        first_class[new] = pred[new]
        first_norm[new] = _norm(delta.detach(), norm)[new]


@contextmanager
def frozen_eval(model: nn.Module):
    """Eval mode, no parameter gradients (attacks differentiate the input only); both restored after."""
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)


def probe(model: nn.Module, spec, images: torch.Tensor, config: ProbeConfig = ProbeConfig(),
          clean_pred: torch.Tensor | None = None) -> ProbeResult:
    """Untargeted PGD away from the model's own predictions on raw ``images``."""
    from .load import input_model

    net = input_model(model, spec)
    start = time.perf_counter()
    with frozen_eval(model):
        if clean_pred is None:
            with torch.no_grad():
                clean_pred = torch.cat([net(images[i:i + config.batch_size]).argmax(1)
                                        for i in range(0, len(images), config.batch_size)])
        gen = torch.Generator().manual_seed(0)
        parts = [pgd(net, images[i:i + config.batch_size], clean_pred[i:i + config.batch_size], config, gen)
                 for i in range(0, len(images), config.batch_size)]
    adv, adv_pred, first_class, first_norm = (torch.cat(t) for t in zip(*parts))
    return ProbeResult(adv, clean_pred, adv_pred, first_class, first_norm, spec.num_classes,
                       time.perf_counter() - start)


# --------------------------------------------------------------------------- trigger reverse-engineering


@dataclass
class TriggerConfig:
    """Neural-Cleanse-style search, per class, for the smallest mask + pattern that sends the
    synthetic images to that class (Wang et al. S&P 2019, here on synthetic data)."""

    images: int = 16  # synthetic images the per-class triggers must work on
    steps: int = 40
    lr: float = 0.2
    mask_weight: float = 0.01  # weight of the mask's L1 size against the cross-entropy
    class_chunk: int = 10  # classes optimised together in one batch (memory vs. speed)
    mask_init: float = -6.0  # mask logits start here: sigmoid(-6) ~ 0.0025, an almost empty mask


@dataclass
class TriggerResult:
    mask_l1: list[float]  # per class: pixels the trigger covers (sum of the soft mask)
    success: list[float]  # per class: share of the images the trigger sends to that class
    seconds: float


def trigger_probe(model: nn.Module, spec, images: torch.Tensor, config: TriggerConfig = TriggerConfig()) -> TriggerResult:
    """For every class c, optimise one mask m (H x W) and pattern p (C x H x W), shared by all
    ``images``, so that ``(1 - m) x + m p`` is classified c while m stays small. A backdoor target
    needs a much smaller mask than the other classes: its trigger is a shortcut."""
    from .load import input_model

    net = input_model(model, spec)
    x = images[: config.images]
    n, c, h, w = x.shape
    k = spec.num_classes
    start = time.perf_counter()
    mask_l1, success = [], []
    with frozen_eval(model):
        for c0 in range(0, k, config.class_chunk):
            classes = torch.arange(c0, min(k, c0 + config.class_chunk))
            kk = len(classes)
            m = torch.full((kk, 1, 1, h, w), config.mask_init, requires_grad=True)
            p = torch.zeros((kk, 1, c, h, w), requires_grad=True)
            opt = torch.optim.Adam([m, p], lr=config.lr)
            y = classes.repeat_interleave(n)
            for _ in range(config.steps):
                mm, pp = torch.sigmoid(m), torch.sigmoid(p)
                xa = ((1 - mm) * x.unsqueeze(0) + mm * pp).reshape(kk * n, c, h, w)
                ce = F.cross_entropy(net(xa), y, reduction="none").view(kk, n).mean(1)
                loss = (ce + config.mask_weight * mm.flatten(1).sum(1)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                mm, pp = torch.sigmoid(m), torch.sigmoid(p)
                xa = ((1 - mm) * x.unsqueeze(0) + mm * pp).reshape(kk * n, c, h, w)
                acc = (net(xa).argmax(1) == y).float().view(kk, n).mean(1)
            mask_l1 += mm.detach().flatten(1).sum(1).tolist()
            success += acc.tolist()
    return TriggerResult(mask_l1, success, time.perf_counter() - start)


def low_outlier_index(values: list[float]) -> tuple[int, float]:
    """(argmin, anomaly index): how many robust standard deviations (1.4826 * MAD) the smallest
    value lies below the median — Neural Cleanse's test, > 2 being its usual outlier line."""
    v = torch.tensor(values, dtype=torch.float64)
    med = v.median()
    mad = 1.4826 * (v - med).abs().median()
    i = int(v.argmin())
    return i, float((med - v[i]) / mad.clamp_min(1e-9 * max(float(med.abs()), 1.0)))


# --------------------------------------------------------------------------- universal perturbations


def universal_perturbation(net: nn.Module, images: torch.Tensor, target_class, eps: float, steps: int,
                           norm: str = "linf", step_size: float | None = None, chunk: int = 1024):
    """The image-agnostic (universal) additive perturbation, inside an L-inf or L2 ball of radius
    ``eps`` (raw pixel units), that sends as many ``images`` as it can to ``target_class``:
    targeted PGD on one ``delta`` shared by all images (pixels of ``x + delta`` clamped to [0, 1]).

    ``net`` takes raw inputs in [0, 1] (``load.input_model``) and should be in eval mode with its
    parameters frozen (``frozen_eval``). ``target_class`` is an int, or a sequence / 1-D tensor of
    classes optimised together in one batch (one delta each: the batch is classes x images, cut
    into pieces of at most ``chunk`` samples per forward pass).

    Returns ``(delta, success_rate)``: for an int target, ``delta`` is C x H x W and
    ``success_rate`` a float, the share of ``images`` that ``x + delta`` puts in the target class;
    for a sequence of T targets, T x C x H x W and a length-T tensor.

    A backdoor is such a shortcut: its target class is reached by a much smaller universal
    perturbation than any other class. Measured: true for the suite's blended, WaNet and FTrojan
    triggers, not for SIG (its 0.31-amplitude stripes are not found from zero in a few steps,
    and the clean models' hub class is as easy: see ``grating_probe``).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm {norm!r}: use 'linf' or 'l2'")
    single = isinstance(target_class, int)
    targets = torch.as_tensor([target_class] if single else list(torch.as_tensor(target_class).tolist()), dtype=torch.long)
    t, n = len(targets), len(images)
    alpha = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    delta = torch.zeros(t, *images.shape[1:])
    y = targets.repeat_interleave(n)

    def forward(d: torch.Tensor) -> torch.Tensor:
        xa = (images.unsqueeze(0) + d.unsqueeze(1)).clamp(0, 1).reshape(t * n, *images.shape[1:])
        return torch.cat([net(xa[i:i + chunk]) for i in range(0, len(xa), chunk)])

    for _ in range(steps):
        delta.requires_grad_(True)
        # sum over images of each class's CE: the gradient per delta is its own class's only
        loss = torch.nn.functional.cross_entropy(forward(delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "linf":
                delta = (delta - alpha * grad.sign()).clamp(-eps, eps)
            else:
                g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
                delta = _project(delta - alpha * g, "l2", eps)
    with torch.no_grad():
        success = (forward(delta).argmax(1) == y).float().view(t, n).mean(1)
    delta = delta.detach()
    return (delta[0], float(success[0])) if single else (delta, success)


# --------------------------------------------------------------------------- grating probe


@dataclass
class GratingConfig:
    """Sinusoidal gratings added to the synthetic images, one at a time (no optimisation)."""

    amplitude: float = 0.35  # raw pixel units; the suite's SIG trigger has 80/255 = 0.31
    max_freq: float = 0.25  # highest frequency, in cycles per pixel x side (0.25: up to side/4 cycles)
    phases: int = 8  # phase steps per frequency (VGG's SIG response halves 1 rad off its phase)
    images: int = 24  # screening: every grating on the last synthetic images (the costly part)
    confirm: int = 3  # classes (top screening shares) whose best grating is re-measured on the other images
    chunk: int = 16  # gratings per forward batch


def gratings(h: int, w: int, max_freq: float = 0.25, phases: int = 8) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    """1-D sinusoidal gratings of unit amplitude, ``sin(2 pi f t / n + 2 pi p / phases)``, varying
    along the width ("x": constant down each column, SIG's stripes) or along the height ("y"), for
    integer f = 1 .. floor(max_freq * n) cycles over the side n. Returns (G x H x W, [(axis, f, p)])."""
    out, meta = [], []
    for axis, n in (("x", w), ("y", h)):
        t = torch.arange(n, dtype=torch.float32)
        for f in range(1, int(max_freq * n) + 1):
            for p in range(phases):
                v = torch.sin(2 * math.pi * f * t / n + 2 * math.pi * p / phases)
                out.append(v.expand(h, w) if axis == "x" else v[:, None].expand(h, w))
                meta.append((axis, f, p))
    if not out:
        return torch.zeros(0, h, w), meta
    return torch.stack(out), meta


@dataclass
class GratingResult:
    shares: list[float]  # per class: share of the images its best grating moves INTO it (confirmed if asked)
    screen_shares: list[float]  # the same on the screening images, where that grating was chosen
    gratings: list[tuple[str, int, int] | None]  # per class: the grating (axis, f, phase step) that did it
    seconds: float
    median_shares: list[float] | None = None  # per class: the median over all gratings of the screening share


def grating_probe(net: nn.Module, images: torch.Tensor, num_classes: int, config: GratingConfig = GratingConfig()) -> GratingResult:
    """Add each grating (``config.amplitude``, pixels clamped to [0, 1], same pattern on every
    channel) to every image; per class, keep the largest share of the images that one grating moves
    into that class from another clean prediction. Then (``config.confirm`` > 0, more images than
    ``config.images``) the best grating of each of the ``confirm`` classes with the largest shares
    is measured again on the images it was not chosen on: the best of ~100 noisy shares is biased
    upwards, most for a hub class that many gratings reach a little; a trigger's share holds up.
    The other classes keep their (upward-biased, so conservative for the gap) screening shares. A clean-label SIG backdoor learns "stripes of
    this frequency = target": one grating then moves most images to the target, while a clean
    model's hub class collects a fraction. Only gratings: the optimised universal perturbations
    (L-inf, low-frequency DCT, rank-1) did not find the trigger (benchmarks/results/scan_sig_*.json).

    ``net`` takes raw inputs in [0, 1] and should be in eval mode."""
    start = time.perf_counter()
    x = images[-config.images:]
    _, h, w = x.shape[1:]
    atoms, meta = gratings(h, w, config.max_freq, config.phases)
    best = torch.zeros(num_classes)
    arg: list = [None] * num_classes
    all_shares = []
    with torch.no_grad():
        clean = net(x).argmax(1)
        for i in range(0, len(atoms), config.chunk):
            a = atoms[i:i + config.chunk]
            xa = (x.unsqueeze(0) + config.amplitude * a[:, None, None]).clamp(0, 1).flatten(0, 1)
            pred = net(xa).argmax(1).view(len(a), len(x))
            for j in range(len(a)):
                moved = pred[j][pred[j] != clean]
                share = torch.bincount(moved, minlength=num_classes).float() / len(x)
                all_shares.append(share)
                for c in (share > best).nonzero().flatten().tolist():
                    arg[c] = meta[i + j]
                best = torch.maximum(best, share)
        screen = [float(v) for v in best]
        rest = images[:-config.images]
        shares = screen
        if config.confirm > 0 and len(rest):
            clean = torch.cat([net(rest[i:i + 256]).argmax(1) for i in range(0, len(rest), 256)])
            shares = list(screen)
            for c in sorted(range(num_classes), key=lambda c: -screen[c])[:config.confirm]:
                if arg[c] is None:
                    continue
                xa = (rest + config.amplitude * atoms[meta.index(arg[c])]).clamp(0, 1)
                pred = torch.cat([net(xa[i:i + 256]).argmax(1) for i in range(0, len(xa), 256)])
                shares[c] = float(((pred == c) & (clean != c)).float().mean())
    median = torch.stack(all_shares).median(0).values.tolist() if all_shares else [0.0] * num_classes
    return GratingResult(shares, screen, arg, time.perf_counter() - start, median)


# --------------------------------------------------------------------------- small-patch probe


@dataclass
class PatchProbeConfig:
    """Per class, one universal patch of bounded area (a soft mask and its pattern, shared by every
    image) optimised to send the fitting images to that class; measured on held-out images."""

    area: float = 0.02  # mask budget, a share of H x W (16 pixels at 28 x 28; the suite's BadNets patch is 9)
    steps: int = 100  # Adam steps, all classes in one batch
    lr: float = 0.1
    images: int = 32  # fitting images (the first ones); the others measure the success
    chunk: int = 1024  # samples per forward pass


@dataclass
class PatchProbeResult:
    shares: list[float]  # per class: share of held-out images (not already that class) its patch moves into it
    mask_l1: list[float]  # per class: pixels the mask covers
    seconds: float


def patch_probe(net: nn.Module, images: torch.Tensor, num_classes: int,
                config: PatchProbeConfig = PatchProbeConfig()) -> PatchProbeResult:
    """Neural Cleanse turned around: instead of the smallest mask per class, the success of a mask
    of fixed small area. A patch trigger (BadNets-like) lets its target be reached from a few pixels;
    other classes should need more. It does not rely on the BN statistics leaning to the target, as
    the softmax ratio does. Measured (CC_NOTES 20): VGG-11 BadNets 0.84 against suite clean models
    <= 0.05, but an easily pushed user net with a checkerboard patch (0.08-0.21) is not told apart
    from its clean twin (0.02-0.11), so ``scan`` reports it only when asked (``ScanConfig.patch``).

    ``net`` takes raw inputs in [0, 1] and should be in eval mode with frozen parameters."""
    start = time.perf_counter()
    fit, held = images[: config.images], images[config.images:]
    if len(held) == 0:
        fit, held = images[: len(images) // 2], images[len(images) // 2:]
    n, c, h, w = fit.shape
    k, budget = num_classes, max(1.0, config.area * h * w)
    m_logit = torch.full((k, 1, 1, h, w), -3.0, requires_grad=True)
    p_logit = torch.zeros((k, 1, c, h, w), requires_grad=True)
    opt = torch.optim.Adam([m_logit, p_logit], lr=config.lr)
    y = torch.arange(k).repeat_interleave(n)

    def mask() -> torch.Tensor:
        m = torch.sigmoid(m_logit)
        return m * (budget / m.flatten(1).sum(1)).clamp(max=1).view(k, 1, 1, 1, 1)  # area <= budget

    def stamped(x: torch.Tensor) -> torch.Tensor:  # k x len(x) images, each class's patch on every image
        m = mask()
        return ((1 - m) * x.unsqueeze(0) + m * torch.sigmoid(p_logit)).flatten(0, 1)

    def logits(xa: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(xa[i:i + config.chunk]) for i in range(0, len(xa), config.chunk)])

    for _ in range(config.steps):
        loss = F.cross_entropy(logits(stamped(fit)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        clean = logits(held).argmax(1)
        pred = logits(stamped(held)).argmax(1).view(k, len(held))
        cls = torch.arange(k).view(k, 1)
        moved = ((pred == cls) & (clean.view(1, -1) != cls)).float().sum(1)
        shares = (moved / (clean.view(1, -1) != cls).float().sum(1).clamp_min(1)).tolist()
    return PatchProbeResult(shares, mask().flatten(1).sum(1).tolist(), time.perf_counter() - start)


# --------------------------------------------------------------------------- smallest masks (Neural Cleanse)


@dataclass
class MaskProbeConfig:
    """Per class, Neural Cleanse's search for the smallest mask + pattern, shared by every fitting image, that sends
    ``goal`` of them to that class: the mask's L1 weight grows 1.5x every 10 steps while the goal holds and shrinks
    otherwise (Wang et al., S&P 2019). All the classes asked for in one batch."""

    # 64 images, 400 steps: with 32 / 300 a 1 %-poisoned diagonal line's target mask (31 px) came within 0.84 of the
    # runner-up's; at 64 / 400 it was 17.5 px, 0.44 (CC_NOTES 35). Fewer images let every class find a small mask
    images: int = 64  # fitting images (the first ones)
    steps: int = 400
    goal: float = 0.9
    lr: float = 0.1
    mask_init: float = -3.0  # mask logits start here: sigmoid(-3) ~ 0.05, about 37 pixels at 28 x 28
    chunk: int = 1024  # samples per forward pass
    bf16: bool = False  # the forward passes under bf16 autocast (only input gradients are taken)


@dataclass
class MaskProbeResult:
    sizes: list[float]  # per class: pixels of the smallest mask that reached the goal (H x W where none did)
    reached: list[bool]
    seconds: float
    masks: torch.Tensor | None = None  # classes x 1 x 1 x H x W: those masks (the last one where none reached the goal)
    patterns: torch.Tensor | None = None  # classes x 1 x C x H x W


def mask_probe(net: nn.Module, images: torch.Tensor, classes: int | list[int],
               config: MaskProbeConfig = MaskProbeConfig()) -> MaskProbeResult:
    """A patch trigger is a shortcut a few pixels wide: its target is reached from a far smaller mask than any other
    class. Unlike the softmax ratio this does not need the BN statistics to lean towards the target, so it sees a
    backdoor poisoned into 1 % of the training data (CC_NOTES 35). ``classes``: a class count (all of them) or the
    classes to search; the teacher patch's ``mask_goal`` searches its target alone.

    ``net`` takes raw inputs in [0, 1] and should be in eval mode with frozen parameters."""
    start = time.perf_counter()
    x = images[: config.images]
    n, c, h, w = x.shape
    targets = torch.arange(classes) if isinstance(classes, int) else torch.tensor(list(classes))
    k = len(targets)
    m_logit = torch.full((k, 1, 1, h, w), config.mask_init, requires_grad=True)
    p_logit = torch.zeros((k, 1, c, h, w), requires_grad=True)
    opt = torch.optim.Adam([m_logit, p_logit], lr=config.lr)
    y = targets.repeat_interleave(n)
    weight = torch.ones(k)
    best = torch.full((k,), float(h * w))  # a mask that reaches the goal is always smaller: it replaces this
    best_m, best_p = torch.zeros(k, 1, 1, h, w), torch.zeros(k, 1, c, h, w)
    for step in range(config.steps):
        m, p = torch.sigmoid(m_logit), torch.sigmoid(p_logit)  # the step below leaves these as they were
        xa = ((1 - m) * x.unsqueeze(0) + m * p).flatten(0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            out = torch.cat([net(xa[i:i + config.chunk]) for i in range(0, len(xa), config.chunk)]).float()
        ce = F.cross_entropy(out, y, reduction="none").view(k, n).mean(1)
        loss = (ce + weight * m.flatten(1).mean(1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            reached = (out.argmax(1) == y).view(k, n).float().mean(1) >= config.goal
            size = m.flatten(1).sum(1)
            smaller = reached & (size < best)
            best = torch.where(smaller, size, best)
            keep = smaller.view(k, 1, 1, 1, 1)
            best_m, best_p = torch.where(keep, m, best_m), torch.where(keep, p, best_p)
            if step % 10 == 9:
                weight = torch.where(reached, weight * 1.5, weight / 1.5)
    reached_ever = best < h * w
    with torch.no_grad():  # never reached: the last mask, whatever it reaches
        never = (~reached_ever).view(k, 1, 1, 1, 1)
        best_m = torch.where(never, torch.sigmoid(m_logit), best_m)
        best_p = torch.where(never, torch.sigmoid(p_logit), best_p)
    return MaskProbeResult(best.tolist(), reached_ever.tolist(), time.perf_counter() - start, best_m, best_p)
