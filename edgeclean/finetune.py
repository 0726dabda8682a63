"""Synthetic fine-tuning for Clean & Compact: distil from the suspect, unlearn its shortcut.

Terms, all on synthetic data only (no real image is ever used):
  * distillation: on (augmented) clean synthetic images, the student matches the teacher's
    temperature-softened outputs (the teacher is the suspect; on clean inputs it is a good teacher)
    and, with ``feature_weight``, the teacher's BatchNorm outputs layer by layer;
  * unlearning: on the adversarial synthetic images (small perturbations that flipped the teacher,
    mostly into the backdoor's target class), the student matches the teacher's output on the
    MATCHING CLEAN image, so the shortcut from "trigger-like perturbation" to the target is undone.

Both models are taken in the raw input space (``load.input_model``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .summary import forward_once


@dataclass
class FinetuneConfig:
    steps: int = 600  # CC_NOTES section 7: 600 steps on 512 images recover the demo to within ~1 pt before patching
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    temperature: float = 4.0
    adv_weight: float = 0.0  # the scan's PGD pairs: off, the teacher patch (unlearn.py) does the unlearning
    shift: int = 2  # random translation in pixels (augmentation of the synthetic set)
    flip: bool = True  # random horizontal flips
    mixup: float = 0.5  # share of each batch replaced by mixes of two synthetic images (teacher labels them)
    # "eval": BN running statistics stay the suspect's (they describe the real training data; synthetic
    # batches would overwrite them, and the post-cleaning scan synthesises from them). "train": adapt.
    # Measured on the README run (demo, 400 KB, int8): eval CA 90.2 / ASR 3.6, post-clean scan 2.06
    # (passes); train CA 89.3 / ASR 0.7, post-clean scan 2.50 (a false positive on class 6).
    bn: str = "eval"
    online_steps: int = 0  # >0: PGD on the STUDENT each step (I-BAU-like unlearning), this many steps
    online_eps: float = 0.1  # L-inf radius of the online perturbation (raw pixel units)
    online_weight: float = 1.0
    drop_target: bool = False  # distil only on synthetic images the teacher does NOT put in the target class
    # remove the suspected target class from the teacher's soft labels before distilling:
    # "off"; "argmax": only on images the teacher labels target; "all": on every image
    suppress_target: str = "off"
    # >0: targeted PGD on the TEACHER towards the suspected target (a trigger proxy) with this L-inf
    # radius, once before training; the student learns the teacher's clean answer on those images
    trigger_eps: float = 0.0
    trigger_steps: int = 10
    trigger_weight: float = 1.0
    # bf16 autocast for the distillation forward passes; None: when the CPU has native bf16 (AVX-512
    # BF16 / AMX). Measured (CC_NOTES 7): 2x faster steps on a full-width ResNet-18, demo 89.2/0.4 vs 88.3/0.0
    bf16: bool | None = None
    # >0: also match the teacher's BatchNorm outputs layer by layer (squared error over the teacher's mean
    # square, averaged over the BN layers both nets share by name), with this weight next to the KD loss.
    # Measured (CC_NOTES 24, students at 1/8, seeds 0-2): clean VGG-11 89.9 -> 90.5, clean ResNet-18 90.2 ->
    # 90.4; 1, 10, 100, 1000 gave 90.1, 90.2, 90.5, 90.5. C&C turns it off behind a patched teacher
    # (``CCConfig.features_with_patch``)
    feature_weight: float = 100.0
    seed: int = 0
    progress: bool = False


def augment(x: torch.Tensor, cfg: FinetuneConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (zero padding), horizontal flips and mixup; raw space stays in [0, 1]."""
    n = x.shape[0]
    if cfg.shift:
        p = cfg.shift
        padded = F.pad(x, (p, p, p, p))
        dx, dy = torch.randint(0, 2 * p + 1, (2,), generator=gen).tolist()
        x = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    if cfg.flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    if cfg.mixup > 0:
        k = int(n * cfg.mixup)
        if k:
            lam = torch.rand(k, 1, 1, 1, generator=gen)
            other = x[torch.randperm(n, generator=gen)[:k]]
            x = torch.cat([lam * x[:k] + (1 - lam) * other, x[k:]])
    return x


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


def _suppress(logits: torch.Tensor, target_class: int | None, mode: str) -> torch.Tensor:
    """Teacher logits with the suspected target class removed (its probability zeroed, rest renormalised)."""
    if target_class is None or mode == "off":
        return logits
    logits = logits.clone()
    rows = torch.ones(len(logits), dtype=torch.bool) if mode == "all" else logits.argmax(1) == target_class
    logits[rows, target_class] = -1e4
    return logits


def shared_bn_names(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the BatchNorm layers the two nets share, with as many channels in both (a factorised student
    keeps every BN of the suspect; a channel-pruned one only those it did not prune)."""
    bn = (nn.BatchNorm1d, nn.BatchNorm2d)
    theirs = {n: m.num_features for n, m in teacher.named_modules() if isinstance(m, bn)}
    return [n for n, m in student.named_modules() if isinstance(m, bn) and theirs.get(n) == m.num_features]


def tap_outputs(model: nn.Module, names: list[str]) -> tuple[dict, list]:
    """Forward hooks that keep the latest output of each named module; returns (outputs, handles)."""
    outputs: dict = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out)) for n in names]
    return outputs, handles


def feature_loss(student_out: dict, teacher_out: dict) -> torch.Tensor:
    """Mean over layers of the squared error between the two nets' outputs, each over the teacher's mean square."""
    terms = [((student_out[n].float() - t.float()) ** 2).mean() / (t.float() ** 2).mean().clamp_min(1e-8)
             for n, t in teacher_out.items()]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def student_pgd(student: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, eps: float, steps: int,
                target_class: int | None) -> torch.Tensor:
    """Perturbation (L-inf ``eps``) that moves the student towards ``target_class`` (or away from ``labels``)."""
    was = student.training
    student.eval()
    delta = torch.zeros_like(x, requires_grad=True)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        logits = student((x + delta).clamp(0, 1))
        if target_class is None:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = -F.cross_entropy(logits, torch.full((len(x),), target_class, dtype=torch.long))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += alpha * grad.sign()
            delta.clamp_(-eps, eps)
    student.train(was)
    return (x + delta.detach()).clamp(0, 1)


def finetune(student: nn.Module, teacher: nn.Module, images: torch.Tensor, adv_images: torch.Tensor | None = None,
             adv_index: torch.Tensor | None = None, config: FinetuneConfig = FinetuneConfig(),
             target_class: int | None = None) -> dict:
    """Fine-tune ``student`` in place (raw-input modules); returns loss statistics.

    ``adv_images[i]`` is an adversarial version of ``images[adv_index[i]]``; ``target_class`` (the
    scan's suspected target, if any) aims the online perturbations.
    """
    gen = torch.Generator().manual_seed(config.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, config.steps))
    student.train(config.bn == "train")
    with torch.no_grad():  # teacher's answers on the clean originals of the adversarial images
        adv_target = None
        if adv_images is not None and len(adv_images):
            adv_target = torch.cat([teacher(images[adv_index[i:i + 256]]) for i in range(0, len(adv_index), 256)])
            adv_target = _suppress(adv_target, target_class, config.suppress_target)
    trig = None
    if config.trigger_eps > 0 and target_class is not None:
        x_t = torch.cat([student_pgd(teacher, images[i:i + 128], None, config.trigger_eps, config.trigger_steps,
                                     target_class) for i in range(0, len(images), 128)])
        with torch.no_grad():
            t_clean = torch.cat([teacher(images[i:i + 256]) for i in range(0, len(images), 256)])
        trig = (x_t, _suppress(t_clean, target_class, config.suppress_target))
    pool = torch.arange(len(images))
    if config.drop_target and target_class is not None:
        # synthetic images from poisoned BN statistics carry trigger-like features; the teacher
        # sends those to the target class, and distilling them re-teaches the shortcut
        with torch.no_grad():
            pred = torch.cat([teacher(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
        keep = (pred != target_class).nonzero().flatten()
        pool = keep if len(keep) else pool
    bf16, bf16_note = train_bf16(config.bf16, student, images)
    taps, names = None, []
    if config.feature_weight > 0:
        names = shared_bn_names(student, teacher)
        taps = (tap_outputs(student, names), tap_outputs(teacher, names)) if names else None
    history, start, skipped = [], time.perf_counter(), 0
    bar = _bar(config.progress, config.steps)
    try:
        for step in range(config.steps):
            idx = pool[torch.randint(0, len(pool), (config.batch_size,), generator=gen)]
            x = augment(images[idx], config, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with torch.no_grad():
                    t_logits = _suppress(teacher(x), target_class, config.suppress_target).float()
                s_logits = student(x).float()
            loss_kd = kd_loss(s_logits, t_logits, config.temperature)
            loss = loss_kd
            loss_feat = feature_loss(taps[0][0], taps[1][0]) if taps is not None else torch.zeros(())
            loss = loss + config.feature_weight * loss_feat
            loss_adv = torch.zeros(())
            if adv_target is not None and config.adv_weight > 0:
                j = torch.randint(0, len(adv_images), (min(config.batch_size, len(adv_images)),), generator=gen)
                loss_adv = kd_loss(student(adv_images[j]), adv_target[j], config.temperature)
                loss = loss + config.adv_weight * loss_adv
            if trig is not None:
                j = torch.randint(0, len(trig[0]), (config.batch_size,), generator=gen)
                loss = loss + config.trigger_weight * kd_loss(student(trig[0][j]), trig[1][j], config.temperature)
            if config.online_steps > 0:
                x_adv = student_pgd(student, x, t_logits.argmax(1), config.online_eps, config.online_steps, target_class)
                loss = loss + config.online_weight * kd_loss(student(x_adv), t_logits, config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # a non-finite loss or gradient would turn every weight into NaN at opt.step(): skip the step, as
            # torch.amp's GradScaler does (CC_NOTES 28 (e): 3-30 of 30 steps of a tiny net under bf16, from the wrong
            # conv gradients that ``train_bf16`` now avoids, CC_NOTES 29 (a); kept for any other cause)
            if torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                opt.step()
            else:
                skipped += 1
            sched.step()
            if step % 25 == 0 or step == config.steps - 1:
                history.append({"step": step, "kd": round(loss_kd.item(), 4), "features": round(loss_feat.item(), 5),
                                "adv": round(loss_adv.item(), 4)})
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"fine-tune kd {loss_kd.item():.3f}")
    finally:
        if bar is not None:
            bar[0].stop()
        for _, handles in taps or ():
            for h in handles:
                h.remove()
        student.eval()
    return {"steps": config.steps, "skipped_steps": skipped, "seconds": round(time.perf_counter() - start, 2),
            "bf16": bf16, **({"bf16_note": bf16_note} if bf16_note else {}), "feature_layers": len(names),
            "history": history}


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (else autocast would emulate it, slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(setting: bool | None) -> bool:
    """A config's bf16 switch: True / False as given, None = where the CPU runs bf16 natively."""
    return native_bf16() if setting is None else setting


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    return progress, progress.add_task("fine-tune", total=total)


def bf16_bad_grad(conv: nn.Module, input_hw: tuple[int, ...]) -> bool:
    """Whether CPU bf16 autocast gives ``conv`` a wrong weight gradient on inputs of spatial size ``input_hw``: a
    kernel wider than 1 with a stride larger than the input, in some spatial dimension (oneDNN on an AVX-512 BF16 /
    AMX host, torch 2.13: the gradient is off by far more than bf16 rounding and now and then not finite; the
    output and the input gradient are right: benchmarks/explore/bf16_conv_grad.py, CC_NOTES 29 (a))."""
    if not isinstance(conv, nn.modules.conv._ConvNd):
        return False
    return any(k > 1 and s > n for k, s, n in zip(conv.kernel_size, conv.stride, input_hw))


def bf16_bad_grad_convs(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the convs of ``model`` that ``bf16_bad_grad`` flags on inputs of ``input_shape`` (C x H x W; one
    forward pass). Training such a net under bf16 would apply wrong gradients to them: the callers train it in fp32."""
    sizes = {}

    def record(name):
        def hook(mod, args):  # returns None: the input is left as it is
            sizes.setdefault(name, (mod, tuple(args[0].shape[2:])))
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    forward_once(model, tuple(input_shape), handles)
    return [name for name, (m, hw) in sizes.items() if bf16_bad_grad(m, hw)]


def train_bf16(setting: bool | None, model: nn.Module, x: torch.Tensor) -> tuple[bool, str | None]:
    """Whether to train ``model`` (on inputs like ``x``) under bf16 autocast: ``use_bf16(setting)``, except where
    some conv's bf16 weight gradient would be wrong (``bf16_bad_grad``); then fp32, and the reason why."""
    if not use_bf16(setting):
        return False, None
    bad = bf16_bad_grad_convs(model, tuple(x.shape[1:]))
    if not bad:
        return True, None
    return False, (f"fp32, not bf16: bf16 weight gradients are wrong for a conv whose stride exceeds its input "
                   f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; CC_NOTES 29 (a))")
