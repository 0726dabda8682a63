"""Byte budgets: parsing, the byte cost of the exported ONNX artifact, global rank allocation.

The cost model counts what the exporter writes after folding BatchNorm into the conv before it:
weights, one bias per conv/linear output channel, plus a per-tensor and a fixed overhead for the
graph (names, shapes, node attributes). Its constants were fitted by ``benchmarks/onnx_bytes.py``
against real files (opset 17, ir_version 13; int8 = onnxruntime static QDQ, per-channel weights).

Rank allocation is global and greedy: every factorisable conv (and hidden Linear) starts dense; each step takes the
move (dense -> largest factorised ranks, or one rank step less in one mode) that loses the least
per byte saved, until the estimate fits the budget (AIMET-style greedy selection). What a move
loses is, by default (``RankConfig.proxy = "output"``), measured: the KL divergence of the model's
output on synthetic images when that one mode of that one layer is truncated (``cc.rank_sensitivity``),
taken as additive over layers and modes. The alternative, "energy", is the normalised energy the
truncation discards (HOSVD bound); it treats every layer as equally important and left VGG-11's last
stages at ranks like (32, 8): at 1/8, before fine-tuning, a clean VGG-11 kept CA 40.1 % with it and
84.4 % with the measured proxy; after C&C, vgg11_ftrojan 79.7 -> 88.3 % (CC_NOTES section 12).
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

import numpy as np

from .errors import UserError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
PRECISIONS = ("fp32", "int8")

# Bytes per counted item, fitted by ``benchmarks/onnx_bytes.py --fit`` (see benchmarks/CC_NOTES.md):
# weight = one weight element; head_weight = one weight of the classifier head (the last Linear, kept
# float in the int8 artifact: export.Int8Config.keep_fp32); channel = one output channel of a layer's last conv or a linear
# (its folded bias, and for int8 the per-channel scale + zero point); inner = an output channel of
# the bias-free inner convs of a factorised block (int8 scale + zero point); tensor = one weight
# tensor (name, dims, node, for int8 its DequantizeLinear and activation Q/DQ pair); fixed = file;
# float_param = a parameter of a layer that is neither a conv, a linear nor a BatchNorm folded into a conv
# (GroupNorm / LayerNorm affine weights, PReLU slopes): written as float at either precision.
COST = {
    # non-negative least squares on the compacted files of export.compact (session 5,
    # benchmarks/results/int8_cost_fit.txt): within -0.3..+0.2% (fp32) and -1.1..+1.0% (int8) on the
    # fit set, inside RankConfig.margin
    "fp32": {"weight": 4.0, "head_weight": 4.0, "float_param": 4.0, "channel": 4.0, "inner": 0.4, "tensor": 177.7,
             "fixed": 0.0},
    "int8": {"weight": 1.0, "head_weight": 4.0, "float_param": 4.0, "channel": 8.0, "inner": 5.9, "tensor": 319.1,
             "fixed": 0.0},
}


def parse_budget(text: str | int | None) -> int | None:
    """'4MB' -> 4_000_000; '4MiB' -> 4_194_304; '500KB', '123456', '123456B' also accepted."""
    if text is None:
        return None
    if isinstance(text, int):
        if text <= 0:
            raise UserError(f"--budget {text} must be positive")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(text).lower())
    if not m:
        raise UserError(f"--budget {text!r} is not a size; write e.g. 4MB, 4MiB, 500KB or 123456 (bytes)")
    value = float(m.group(1)) * UNITS[m.group(2) or ""]
    if value < 1:
        raise UserError(f"--budget {text!r} must be at least 1 byte")
    return int(value)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    return precision


# --------------------------------------------------------------------------- byte cost model


def conv_counts(c_in: int, c_out: int, kernel: tuple[int, int], ranks: tuple[int, int] | None = None) -> dict:
    """Counted items (see COST) of one conv layer: dense, or factorised at ``ranks`` = (r_in, r_out)."""
    kk = kernel[0] * kernel[1]
    if ranks is None:
        return {"weight": c_out * c_in * kk, "channel": c_out, "inner": 0, "tensor": 1}
    r_in, r_out = ranks
    if kk == 1:  # two 1x1 convs
        return {"weight": r_in * (c_in + c_out), "channel": c_out, "inner": r_in, "tensor": 2}
    return {"weight": c_in * r_in + r_in * r_out * kk + r_out * c_out, "channel": c_out,
            "inner": r_in + r_out, "tensor": 3}


def price(counts: dict, precision: str) -> float:
    c = COST[precision]
    return sum(c[k] * v for k, v in counts.items())


def conv_bytes(c_in: int, c_out: int, kernel: tuple[int, int], precision: str,
               ranks: tuple[int, int] | None = None) -> float:
    """Bytes of one conv layer in the artifact: dense, or factorised at ``ranks`` = (r_in, r_out)."""
    return price(conv_counts(c_in, c_out, kernel, ranks), precision)


def model_counts(model, float_layers=None) -> dict:
    """Counted items (see COST) of a whole model, including the file's fixed part. ``float_layers``: names of the
    layers the int8 artifact keeps float (``export.int8_float_layers``), counted as ``head_weight``; None: the
    last Linear."""
    from torch import nn

    from .factorize import FACTORIZED_TYPES, layer_dims
    from .synth import BN_TYPES

    total = {"weight": 0, "head_weight": 0, "float_param": 0, "channel": 0, "inner": 0, "tensor": 0, "fixed": 1}

    def add(d):
        for k, v in d.items():
            total[k] += v

    # the classifier head (last Linear) stays float in the int8 artifact (export.Int8Config.keep_fp32)
    if float_layers is None:
        float_layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    inside: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, FACTORIZED_TYPES):  # a 3-conv block, two 1x1 convs or two Linears
            inside.update(f"{name}.{i}" for i in range(len(m)))
            kernel = m[1].kernel_size if len(m) == 3 else (1, 1)
            add(conv_counts(layer_dims(m[0])[0], layer_dims(m[-1])[1], kernel, m.ranks))
        elif isinstance(m, nn.Conv2d) and name not in inside:
            counts = conv_counts(m.in_channels // m.groups, m.out_channels, m.kernel_size)
            if name in float_layers:
                counts["head_weight"] = counts.pop("weight")
            add(counts)
        elif isinstance(m, nn.Linear):
            if name not in inside:
                kind = "head_weight" if name in float_layers else "weight"
                add({kind: m.weight.numel(), "channel": m.out_features, "tensor": 1})
        elif not isinstance(m, (nn.Conv2d, *BN_TYPES)):
            # e.g. GroupNorm: nothing to fold it into, so its weights ship as they are (a GroupNorm net's fp32 file
            # came out 0.7 % over its budget before these were counted)
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if own:
                add({"float_param": own, "tensor": 1})
    return total


def estimate_bytes(model, precision: str = "fp32", float_layers=None) -> int:
    """Estimated size of ``model`` exported to ONNX at ``precision`` (BatchNorm folded; ``float_layers``: see
    ``model_counts``)."""
    return int(round(price(model_counts(model, float_layers), check_precision(precision))))


# --------------------------------------------------------------------------- rank allocation


@dataclass
class LayerSpectrum:
    """What the allocator needs to know about one factorisable conv."""

    name: str
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    s_in: np.ndarray  # mode-2 singular values, descending
    s_out: np.ndarray  # mode-1 singular values, descending
    # measured loss of truncating one mode to a rank (the other left full), e.g. the model's output
    # divergence on synthetic images (cc.rank_sensitivity); None: the HOSVD energy bound stands in
    loss_in: dict[int, float] | None = None
    loss_out: dict[int, float] | None = None

    @property
    def is_1x1(self) -> bool:
        return self.kernel[0] * self.kernel[1] == 1


@dataclass
class RankConfig:
    dense_fraction: float = 0.7  # a layer above this rank fraction stays dense
    multiple: int = 8  # ranks are multiples of this ...
    multiple_from: int = 32  # ... in modes whose full rank is at least this
    default_energy: float = 0.9  # share of each mode's energy kept when no budget is given
    margin: float = 0.02  # aim this much under the budget: the byte model is within ~1.5% on real files
    # what a rank costs in the greedy search: "energy" = the HOSVD energy bound of the weights alone;
    # "output" = the model's measured output divergence on synthetic images (cc.rank_sensitivity)
    proxy: str = "output"
    probe_images: int = 128  # synthetic images the "output" proxy measures on
    probe_points: int = 12  # ranks measured per mode (evenly over the grid; linear in between)
    # where a backdoor is suspected, the factorisable convs keep at most this share of their dense bytes, however
    # large the budget, since compression is part of the cleaning. Measured (CC_NOTES 27): at the int8 budget of 1/8
    # of the fp32 file (about half the weights), vgg11_sig / vgg11_blended kept ASR 12.7 / 6.7 %; capped at 1/4 of the
    # weights 8.7 / 6.3 %; at 1/8 (the share every suite suspect was cleaned at in fp32) 0.2 / 1.8 %. Over the 11
    # backdoored suspects it cost 3.2 pt of CA on average (1.4-6.0). None: the budget alone decides
    suspected_fraction: float | None = 0.125
    # ... but only where that share sits at least this many times above the convs' smallest ranks (fp32 bytes; the
    # suite's nets: 3.4-4.8). A net already near its smallest ranks at that share is not cut further: capped, every
    # conv of ColorNet (1.7) fell to its smallest rank and its CA from 82 to 45-57 %, where its uncapped cleaning had
    # left ASR at 0.0-0.6 % (CC_NOTES 27)
    suspected_min_room: float = 2.0


def _step(full: int, cfg: RankConfig) -> int:
    return cfg.multiple if full >= cfg.multiple_from else 1


def _grid(full: int, cfg: RankConfig) -> list[int]:
    """Allowed ranks of one mode, descending, all <= dense_fraction * full."""
    step = _step(full, cfg)
    top = int(cfg.dense_fraction * full) // step * step
    return list(range(top, 0, -step)) or [1]


def _lost(s: np.ndarray, r: int) -> float:
    e = s.astype(np.float64) ** 2
    return float(e[r:].sum() / max(e.sum(), 1e-30))


def layer_loss(layer: LayerSpectrum, ranks: tuple[int, int] | None) -> float:
    """Loss at ``ranks``: the measured per-mode losses when the layer has them (taken as additive
    over the two modes), else the normalised energy lost (HOSVD bound, both modes); 0 for dense."""
    if ranks is None:
        return 0.0
    if layer.loss_out is not None:
        if layer.is_1x1:
            return layer.loss_out[ranks[0]]
        return layer.loss_in[ranks[0]] + layer.loss_out[ranks[1]]
    if layer.is_1x1:
        return _lost(layer.s_out, ranks[0])
    return _lost(layer.s_in, ranks[0]) + _lost(layer.s_out, ranks[1])


def rank_grids(layer: LayerSpectrum, config: RankConfig) -> tuple[list[int], list[int]]:
    """The ranks the allocator may give each mode (r_in grid, r_out grid), descending."""
    full_in, full_out = _full(layer)
    grid_in = _grid(full_in, config)
    return grid_in, (grid_in if layer.is_1x1 else _grid(full_out, config))


def probe_ranks(grid: list[int], points: int) -> list[int]:
    """At most ``points`` ranks spread evenly over ``grid``, its largest and smallest included."""
    if len(grid) <= points:
        return list(grid)
    idx = np.unique(np.round(np.linspace(0, len(grid) - 1, max(points, 2))).astype(int))
    return [grid[i] for i in idx]


def interpolate(measured: dict[int, float], grid: list[int]) -> dict[int, float]:
    """A loss for every rank of ``grid`` from those measured (linear in the rank)."""
    xs = sorted(measured)
    return {r: float(np.interp(r, xs, [measured[x] for x in xs])) for r in grid}


def monotone(losses: dict[int, float]) -> dict[int, float]:
    """A measured loss curve made non-increasing in the rank (noise must not reward cutting more)."""
    out, worst = {}, 0.0
    for r in sorted(losses, reverse=True):
        worst = max(worst, losses[r])
        out[r] = worst
    return out


def _full(layer: LayerSpectrum) -> tuple[int, int]:
    if layer.is_1x1:
        r = min(layer.c_in, layer.c_out)
        return r, r
    kk = layer.kernel[0] * layer.kernel[1]
    return min(layer.c_in, layer.c_out * kk), min(layer.c_out, layer.c_in * kk)


_HERE = object()  # _State.ranks / cost: "the layer's current position" (None means dense)


class _State:
    """One layer's position in the greedy search: dense, or an index into each mode's grid."""

    def __init__(self, layer: LayerSpectrum, precision: str, cfg: RankConfig):
        self.layer, self.precision = layer, precision
        self.grid_in, self.grid_out = rank_grids(layer, cfg)
        self.dense_cost = conv_bytes(layer.c_in, layer.c_out, layer.kernel, precision)
        self.idx: tuple[int, int] | None = None  # None = dense

    def ranks(self, idx=_HERE):
        """Ranks at ``idx`` (default: where the layer is now); None = dense."""
        idx = self.idx if idx is _HERE else idx
        return None if idx is None else (self.grid_in[idx[0]], self.grid_out[idx[1]])

    def cost(self, idx=_HERE) -> float:
        r = self.ranks(idx)
        return self.dense_cost if r is None else conv_bytes(self.layer.c_in, self.layer.c_out, self.layer.kernel, self.precision, r)

    def next_move(self):
        """(loss per byte saved, new idx) of the best single move, or None when at the minimum."""
        here_cost, here_loss = self.cost(), layer_loss(self.layer, self.ranks())
        if self.idx is None:
            # the largest factorised ranks that are cheaper than dense (1x1 convs only pay below
            # rank c_in*c_out/(c_in+c_out))
            n = max(len(self.grid_in), len(self.grid_out))
            options = [(min(i, len(self.grid_in) - 1), min(i, len(self.grid_out) - 1)) for i in range(n)]
            cands = [o for o in options if self.cost(o) < here_cost][:1]
        elif self.layer.is_1x1:
            i = self.idx[0] + 1
            cands = [(i, i)] if i < len(self.grid_in) else []
        else:
            cands = []
            if self.idx[0] + 1 < len(self.grid_in):
                cands.append((self.idx[0] + 1, self.idx[1]))
            if self.idx[1] + 1 < len(self.grid_out):
                cands.append((self.idx[0], self.idx[1] + 1))
        best = None
        for c in cands:
            saved = here_cost - self.cost(c)
            if saved <= 0:
                continue
            ratio = (layer_loss(self.layer, self.ranks(c)) - here_loss) / saved
            if best is None or ratio < best[0]:
                best = (ratio, c)
        return best

    def up_moves(self) -> list:
        """Moves one rank step back up (towards dense), as new idx (None = dense)."""
        if self.idx is None:
            return []
        if self.layer.is_1x1:
            i = self.idx[0] - 1
            return [(i, i)] if i >= 0 else [None]
        moves = [(self.idx[0] - 1, self.idx[1])] if self.idx[0] > 0 else []
        moves += [(self.idx[0], self.idx[1] - 1)] if self.idx[1] > 0 else []
        return moves or [None]

    def min_cost(self) -> float:
        """Cheapest reachable cost of this layer."""
        costs = [self.dense_cost]
        if self.layer.is_1x1:
            costs.append(self.cost((len(self.grid_in) - 1,) * 2))
        else:
            costs.append(self.cost((len(self.grid_in) - 1, len(self.grid_out) - 1)))
        return min(costs)


def dense_bytes(layers: list[LayerSpectrum], precision: str = "fp32") -> float:
    """The layers' bytes as dense convs."""
    return sum(conv_bytes(l.c_in, l.c_out, l.kernel, precision) for l in layers)


def cheapest_bytes(layers: list[LayerSpectrum], precision: str = "fp32", config: RankConfig = RankConfig()) -> float:
    """The layers' bytes each at its cheapest: its minimum ranks, or dense where that is not smaller."""
    return sum(_State(l, precision, config).min_cost() for l in layers)


def smallest_reachable(layers: list[LayerSpectrum], other_bytes: float, precision: str = "fp32",
                       config: RankConfig = RankConfig()) -> float:
    """The smallest artifact the allocator reaches: each layer at its cheapest, plus ``other_bytes`` and the margin."""
    return (other_bytes + cheapest_bytes(layers, precision, config)) / (1.0 - config.margin)


def cap_room(layers: list[LayerSpectrum], fraction: float, config: RankConfig = RankConfig()) -> float:
    """How many times ``fraction`` of the layers' dense weights exceeds the weights at their smallest ranks."""
    smallest = cheapest_bytes(layers, "fp32", config)
    return fraction * dense_bytes(layers) / smallest if smallest else float("inf")


def capped_budget(layers: list[LayerSpectrum], budget_bytes: int | None, other_bytes: float, precision: str,
                  config: RankConfig = RankConfig(), fraction: float | None = None) -> int | None:
    """``budget_bytes`` (None: no budget), or less where ``fraction`` of the layers' dense bytes plus ``other_bytes``
    is less. No cap where that share is within ``config.suspected_min_room`` of the smallest ranks (``cap_room``);
    never below the smallest reachable size, so a cap alone cannot make a budget impossible."""
    if fraction is None or cap_room(layers, fraction, config) < config.suspected_min_room:
        return budget_bytes
    cap = other_bytes + fraction * dense_bytes(layers, precision)
    cap = max(int(cap), int(smallest_reachable(layers, other_bytes, precision, config)) + 1)
    return cap if budget_bytes is None else min(budget_bytes, cap)


def allocate_ranks(layers: list[LayerSpectrum], budget_bytes: int, other_bytes: float,
                   precision: str = "fp32", config: RankConfig = RankConfig()) -> dict[str, tuple[int, int] | None]:
    """Ranks (r_in, r_out) per layer, or None for dense, so that the artifact fits ``budget_bytes``.

    ``other_bytes`` is the estimated size of everything that is not one of ``layers``.
    Raises ``UserError`` stating the smallest reachable size when the budget cannot be met.
    """
    states = {l.name: _State(l, precision, config) for l in layers}
    target = budget_bytes * (1.0 - config.margin)
    total = other_bytes + sum(s.cost() for s in states.values())
    heap = []
    for name, s in states.items():
        mv = s.next_move()
        if mv:
            heapq.heappush(heap, (mv[0], name, mv[1]))
    while total > target and heap:
        _, name, idx = heapq.heappop(heap)
        s = states[name]
        before = s.cost()
        s.idx = idx
        total += s.cost() - before
        mv = s.next_move()
        if mv:
            heapq.heappush(heap, (mv[0], name, mv[1]))
    if total > target:
        smallest = smallest_reachable(layers, other_bytes, precision, config)
        raise UserError(
            f"budget {budget_bytes:,} bytes cannot be met at {precision}: the smallest reachable artifact is "
            f"about {int(smallest):,} bytes ({smallest / 1e6:.2f} MB); raise --budget"
            + ("" if precision == "int8" else " or use --precision int8")
        )
    _refill(states, target - total)
    return {name: s.ranks() for name, s in states.items()}


def _refill(states: dict, slack: float) -> None:
    """Spend what the last greedy steps left under the budget: repeatedly take the step back up that
    recovers the most loss per byte among those that still fit (the descent ends with one coarse
    step, e.g. a layer going factorised, and can stop ~10% under the budget)."""
    while True:
        best = None
        for s in states.values():
            here_cost, here_loss = s.cost(), layer_loss(s.layer, s.ranks())
            for idx in s.up_moves():
                added = s.cost(idx) - here_cost
                if added <= 0 or added > slack:
                    continue
                gain = here_loss - layer_loss(s.layer, s.ranks(idx))
                if best is None or gain / added > best[0]:  # a flat stretch of a curve (gain 0) still gets spare bytes
                    best = (gain / added, s, idx, added)
        if best is None:
            return
        _, s, idx, added = best
        s.idx, slack = idx, slack - added


def energy_ranks(layers: list[LayerSpectrum], precision: str = "fp32",
                 config: RankConfig = RankConfig()) -> dict[str, tuple[int, int] | None]:
    """No budget: per mode, the smallest rank holding ``config.default_energy`` of the energy
    (rounded up to the rank step); layers whose ranks exceed the dense fraction, or whose factorised
    form is not smaller, stay dense."""
    out = {}
    for layer in layers:
        full_in, full_out = _full(layer)

        def keep(s, full):
            e = np.cumsum(s.astype(np.float64) ** 2)
            r = int(np.searchsorted(e / e[-1], config.default_energy) + 1)
            step = _step(full, config)
            return min(full, -(-r // step) * step)

        r_out = keep(layer.s_out, full_out)
        r_in = r_out if layer.is_1x1 else keep(layer.s_in, full_in)
        too_big = r_in > config.dense_fraction * full_in or r_out > config.dense_fraction * full_out
        dense = conv_bytes(layer.c_in, layer.c_out, layer.kernel, precision)
        fact = conv_bytes(layer.c_in, layer.c_out, layer.kernel, precision, (r_in, r_out))
        out[layer.name] = None if too_big or fact >= dense else (r_in, r_out)
    return out
