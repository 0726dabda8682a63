"""Train suspects: (backdoored) classifiers for the evaluation harness, on the CPU.

``train_suspect(TrainConfig(...), out="models/x.pt")`` trains a zoo network on a poisoned training
set and writes the state_dict and a JSON card beside it (``x.json``). The card's ``spec`` is a
``load.ModelSpec`` so ``load_suspect`` recovers input shape and normalisation; its ``attack``,
``attack_params`` and ``target`` re-create the trigger for ``edgeclean evaluate``.

Recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4), one-cycle learning rate, batch 128,
no augmentation (few epochs on Fashion-MNIST do not need it). The poisoned subset is re-drawn
every epoch (seed + epoch) with the same trigger, so each epoch sees ``poison_ratio`` of poisoned
images but different ones, as WaNet's per-batch poisoning does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .attacks import attack_params, get_attack, poison_dataset, poisoned_test_set
from .data import Dataset, parse_dataset
from .errors import UserError
from .finetune import train_bf16
from .load import ModelSpec, input_model
from .metrics import evaluate_predictor, torch_predict
from .zoo import REGISTRY, create_model

# Per-data-set normalisation the trained nets expect (stored in the card's spec).
NORMALIZATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class TrainConfig:
    dataset: str = "fashion-mnist"
    arch: str = "resnet18"
    arch_kwargs: dict = field(default_factory=lambda: {"width": 0.25, "stem": "imagenet"})
    attack: str = "badnets"  # or "none" for a clean model
    attack_params: dict = field(default_factory=dict)
    target: int = 0
    poison_ratio: float = 0.1
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    bf16: bool = False  # CPU bf16 autocast; off by default: it blurs invisible (FTrojan) triggers
    threads: int | None = None


def _spec_for(cfg: TrainConfig, train: Dataset) -> ModelSpec:
    c, h, w = train.input_shape
    kind = parse_dataset(cfg.dataset).kind
    mean, std = NORMALIZATION.get(kind, ((0.0,) * c, (1.0,) * c))
    kwargs = {"num_classes": train.num_classes, "in_channels": c, **cfg.arch_kwargs}
    return ModelSpec(arch=cfg.arch, arch_kwargs=kwargs, num_classes=train.num_classes,
                     input_shape=(c, h, w), mean=tuple(mean), std=tuple(std))


def _progress(console_quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=console_quiet)


def train_suspect(cfg: TrainConfig, out: str | Path | None = None, quiet: bool = False, log=print) -> tuple[torch.nn.Module, dict]:
    """Train per ``cfg``; return (model, card) and write ``out`` + its card when given."""
    if cfg.arch not in REGISTRY:
        raise UserError(f"--arch {cfg.arch!r} is not a zoo model; use one of {', '.join(REGISTRY)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    attack = None if cfg.attack in (None, "", "none", "clean") else get_attack(cfg.attack).name
    src = parse_dataset(cfg.dataset, seed=cfg.seed)
    train, test = src.train(), src.test()
    spec = _spec_for(cfg, train)
    if attack and not 0 <= cfg.target < train.num_classes:
        raise UserError(f"--target {cfg.target} is not a class of {cfg.dataset} (0..{train.num_classes - 1})")
    params = attack_params(attack, spec.input_shape, **cfg.attack_params) if attack else {}

    torch.manual_seed(cfg.seed)
    net = create_model(cfg.arch, **spec.arch_kwargs)
    net = net.to(memory_format=torch.channels_last)  # faster convolutions on the CPU
    raw = input_model(net, spec)  # train on raw [0, 1] pixels, normalising inside
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                                                pct_start=0.25)
    poisoned_test = poisoned_test_set(test, attack, cfg.target, params) if attack else None
    bf16, bf16_note = train_bf16(cfg.bf16, raw, train.x[:1])
    if bf16_note:
        log(bf16_note)

    start, cpu_start = time.perf_counter(), time.process_time()
    with _progress(quiet) as bar:
        task = bar.add_task(f"{cfg.arch} {attack or 'clean'}", total=cfg.epochs * steps_per_epoch, info="")
        for epoch in range(cfg.epochs):
            data = poison_dataset(train, attack, cfg.target, cfg.poison_ratio, cfg.seed * 1000 + epoch, params).dataset if attack else train
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = torch.randperm(len(data), generator=g)
            net.train()
            seen, loss_sum = 0, 0.0
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch_size: (i + 1) * cfg.batch_size]
                x = data.x[idx].contiguous(memory_format=torch.channels_last)
                y = data.y[idx]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(raw(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(idx)
                loss_sum += float(loss.detach()) * len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f}")
            net.eval()
            m = evaluate_predictor(lambda x: torch_predict(raw, x), test, poisoned_test, cfg.target if attack else None)
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f}  CA {m['ca']:.4f}"
                + (f"  ASR {m['asr']:.4f}" if attack else "") + f"  {time.perf_counter() - start:.0f}s")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    net = net.to(memory_format=torch.contiguous_format).eval()
    card = {
        "spec": spec.to_dict(),
        "dataset": cfg.dataset,
        "attack": attack or "none",
        "attack_params": params,
        "target": cfg.target if attack else None,
        "poison_ratio": cfg.poison_ratio if attack else 0.0,
        "clean_label": bool(attack and get_attack(attack).clean_label),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "ca": m["ca"],
        "asr": m.get("asr"),
        "racc": m.get("racc"),
        "train_seconds": round(seconds, 1),  # wall clock, on whatever share of the CPU the job got
        "train_cpu_seconds": round(cpu_seconds, 1),  # CPU time of all threads: comparable across loads
        "train_config": asdict(cfg),
        **({"bf16_note": bf16_note} if bf16_note else {}),
        "size_bytes_fp32": sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point()),
        "torch": torch.__version__,
    }
    if out is not None:
        save_suspect(net, card, out)
    return net, card


def save_suspect(net: torch.nn.Module, card: dict, out: str | Path) -> None:
    """Write the state_dict and its card atomically (temp file, then os.replace)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({k: v.detach().contiguous() for k, v in net.state_dict().items()}, tmp)
    card_path = out.with_suffix(".json")
    tmp_card = card_path.with_name(card_path.name + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, out)
    os.replace(tmp_card, card_path)
