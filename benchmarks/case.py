"""What the C&C benchmark and exploration scripts share: a suspect with its card, CA / ASR on the
first test images, and its synthetic images cached on disk."""

from __future__ import annotations

import copy
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.load import input_model, load_suspect, read_card  # noqa: E402
from edgeclean.metrics import evaluate  # noqa: E402


@functools.lru_cache(maxsize=None)
def _test_subset(n: int):
    return load_fashion_mnist("test").subset(range(n))  # read once per script, however many suspects


class Case:
    """A suspect (``load_suspect``) with its card's attack and target, evaluated on ``n_test`` test images."""

    def __init__(self, path: str | Path, n_test: int = 1000):
        self.path = Path(path)
        self.card = read_card(self.path)
        self.model, self.spec = load_suspect(self.path)
        self.attack, self.target = self.card.get("attack"), self.card.get("target")
        self.params = self.card.get("attack_params")
        self.test = _test_subset(n_test)

    def ev(self, model) -> tuple[float, float]:
        """(CA, ASR) of ``model`` in %, one decimal (ASR nan for a clean suspect)."""
        r = evaluate(input_model(model, self.spec).eval(), self.test, self.attack, self.target, self.params)
        return round(r["ca"] * 100, 1), round(r.get("asr", float("nan")) * 100, 1)

    def real_line(self, net) -> str:
        """CA, ASR, the target's recall and ``metrics.redirect`` of ``net`` (raw inputs, eval mode) on the case's
        test images, as one line."""
        r = evaluate(net, self.test, self.attack, self.target, self.params)
        with torch.no_grad():
            pred = net(self.test.x).argmax(1)
        mine = self.test.y == self.target
        rd = r["redirect"]
        return (f"CA {100 * r['ca']:.1f} ASR {100 * r['asr']:.1f} recall {float((pred[mine] == self.target).float().mean()):.3f} "
                f"redirect {rd['class']} {100 * rd['rate']:.1f} ({100 * rd['clean_rate']:.1f})")

    def images(self, n: int = 512, cache: str = ".cache/refit", iterations: int | None = None) -> torch.Tensor:
        """``n`` synthetic images of the suspect (``synth`` defaults, seed 1; ``iterations`` per batch if given), made
        once and cached."""
        from edgeclean.synth import SynthConfig, synthesize

        config = SynthConfig(seed=1) if iterations is None else SynthConfig(seed=1, iterations=iterations)
        path = Path(cache) / f"{self.path.stem}{'' if iterations is None else f'.it{iterations}'}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)[:n]
        images = synthesize(self.model, self.spec, n, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images, path)
        return images

    def patched(self, config, n: int = 512):
        """A copy of the suspect patched by ``unlearn.patch_head`` with ``config`` (a ``PatchConfig``) on ``n`` cached
        synthetic images, the card's target standing in for the scan's, as a ``Patched``."""
        from edgeclean.unlearn import patch_head

        images = self.images(n)
        teacher = copy.deepcopy(self.model).eval()
        net = input_model(teacher, self.spec).eval()
        result = patch_head(net, teacher, images, self.target, config)
        fit = images[: config.n_reverse]
        with torch.no_grad():  # the suspect's own answers on the held-out images, for ``Patched.unchanged``
            base = input_model(self.model, self.spec).eval()(result.check).argmax(1)
        return Patched(teacher, net, result, fit, torch.cat([fit, images[config.n_reverse + config.n_check:]]), base,
                       self.target)


@dataclass
class Patched:
    """``Case.patched``: the patched teacher (``net``: raw inputs), ``patch_head``'s result, the images its triggers were
    fitted on (``fit``) and the ones an unlearn stage trains on (``train``: all but the held-out ``result.check``)."""
    teacher: torch.nn.Module
    net: torch.nn.Module
    result: object
    fit: torch.Tensor
    train: torch.Tensor
    base: torch.Tensor  # the suspect's predictions on result.check
    target: int

    def unchanged(self, net) -> float:
        """Share of the held-out images the suspect puts outside the target whose prediction ``net`` keeps."""
        with torch.no_grad():
            return float((net(self.result.check).argmax(1) == self.base)[self.base != self.target].float().mean())


def overrides(config, pairs) -> dict:
    """'FIELD=VALUE' strings as typed values of the dataclass ``config``'s fields, for ``dataclasses.replace``:
    tuples comma-separated, a tuple of tuples (``PatchConfig.plans``) as "a+b/c", "None" for an optional number."""
    def typed(current, v: str):
        if isinstance(current, bool):
            return v.lower() in ("1", "true", "yes")
        if current is None:  # an optional number (e.g. PatchConfig.mask_goal)
            return None if v == "None" else float(v)
        if isinstance(current, tuple) and current and isinstance(current[0], tuple):
            return tuple(tuple(p.split("+")) for p in v.split("/"))
        return tuple(v.split(",")) if isinstance(current, tuple) else type(current)(v)
    return {k: typed(getattr(config, k), v) for k, v in (a.split("=", 1) for a in pairs)}


def carded(paths):
    """(path, card, model, spec) for each checkpoint in ``paths`` that has a card beside it (the suite's
    suspects; anything without a card is skipped)."""
    for path in map(Path, paths):
        card = read_card(path)
        if card:
            yield (path, card, *load_suspect(path))
