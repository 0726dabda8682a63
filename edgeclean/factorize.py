"""Tucker-2 factorised convolutions: the math, the 3-conv block, module swapping, rebuilding.

A conv weight W (C_out x C_in x k x k) is decomposed over its two channel modes by HOSVD:
U_out = left singular vectors of the mode-1 unfolding (C_out x C_in*k*k), U_in = those of the
mode-2 unfolding (C_in x C_out*k*k), core = W x_1 U_out^T x_2 U_in^T. Because the factors are
orthonormal, truncating to ranks (r_in, r_out) is slicing the leading columns / core entries, and
scaling rank component i of a mode is scaling the matching core slice.

The factorised layer is three plain ``nn.Conv2d`` (1x1 C_in->r_in, kxk r_in->r_out, 1x1
r_out->C_out) so the ONNX export holds exactly three Conv nodes and runtimes need nothing new.
A 1x1 conv is a matrix: it becomes two 1x1 convs (r = r_in = r_out). A hidden Linear is the same matrix case
and becomes two Linears (``FactorizedLinear``); the classifier stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Tucker2:
    """HOSVD of one conv weight over its channel modes (all factors full rank unless truncated)."""

    core: torch.Tensor  # (R_out, R_in, kh, kw)
    u_out: torch.Tensor  # (C_out, R_out), orthonormal columns
    u_in: torch.Tensor  # (C_in, R_in), orthonormal columns
    s_out: torch.Tensor  # singular values of the mode-1 unfolding, descending (full length)
    s_in: torch.Tensor  # singular values of the mode-2 unfolding, descending (full length)

    @property
    def ranks(self) -> tuple[int, int]:
        """(r_in, r_out) currently held."""
        return self.u_in.shape[1], self.u_out.shape[1]


def unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-n matricization: mode 0 -> (C_out, C_in*k*k), mode 1 -> (C_in, C_out*k*k)."""
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def left_singular(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and values of a wide matrix via the eigendecomposition of A A^T.

    An order of magnitude faster than an SVD of the (C x C*k*k) unfolding on a CPU, and exact
    enough in float64 (the factors stay orthonormal, so full-rank reconstruction is exact).
    """
    if a.shape[0] > a.shape[1]:
        # tall: a Linear's input mode (a VGG head's 25088 x 4096 would need a 25088^2 eigh). The small Gram matrix
        # gives the right singular vectors V; a V has orthogonal columns of norm s, and its QR (signs fixed) is
        # U, orthonormal even where s is ~0 (so a full-rank reconstruction stays exact)
        v, s = left_singular(a.T)
        u, r = torch.linalg.qr(a @ v)
        return u * torch.where(r.diagonal() < 0, -1.0, 1.0).to(u), s
    gram = a @ a.T
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small eigh: threading only adds contention (measured 40x slower on 2 busy cores)
    try:
        evals, evecs = torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)
    r = min(a.shape)
    order = torch.argsort(evals, descending=True)[:r]
    return evecs[:, order], evals[order].clamp_min(0).sqrt()


def tucker2(weight: torch.Tensor) -> Tucker2:
    """Full-rank Tucker-2 (HOSVD) of a conv weight; exact: ``reconstruct(tucker2(w)) == w``."""
    w = weight.detach().to(torch.float64)  # float64 keeps full-rank reconstruction at ~1e-12
    u_out, s_out = left_singular(unfold(w, 0))
    u_in, s_in = left_singular(unfold(w, 1))
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    return Tucker2(core, u_out, u_in, s_out, s_in)


def truncate(t: Tucker2, r_in: int, r_out: int) -> Tucker2:
    """Keep the leading ``r_in`` / ``r_out`` components (HOSVD truncation)."""
    return Tucker2(t.core[:r_out, :r_in].clone(), t.u_out[:, :r_out], t.u_in[:, :r_in], t.s_out, t.s_in)


def scale(t: Tucker2, out_factors: torch.Tensor | None = None, in_factors: torch.Tensor | None = None) -> Tucker2:
    """Multiply mode-1 component i by ``out_factors[i]`` and mode-2 component j by ``in_factors[j]``."""
    core = t.core
    if out_factors is not None:
        core = core * out_factors[: core.shape[0]].to(core).view(-1, 1, 1, 1)
    if in_factors is not None:
        core = core * in_factors[: core.shape[1]].to(core).view(1, -1, 1, 1)
    return Tucker2(core, t.u_out, t.u_in, t.s_out, t.s_in)


def reconstruct(t: Tucker2) -> torch.Tensor:
    return torch.einsum("rshw,or,is->oihw", t.core, t.u_out, t.u_in)


def full_ranks(conv: nn.Conv2d) -> tuple[int, int]:
    """Largest useful (r_in, r_out): the ranks of the mode-2 and mode-1 unfoldings."""
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    c_out, c_in = conv.out_channels, conv.in_channels
    if kk == 1:  # a matrix: one rank for both modes
        r = min(c_out, c_in)
        return r, r
    return min(c_in, c_out * kk), min(c_out, c_in * kk)


def factorizable(conv: nn.Module) -> bool:
    """Dense grouped/depthwise convs and non-2D convs are left alone."""
    return type(conv) is nn.Conv2d and conv.groups == 1


def decomposes(m: nn.Module) -> bool:
    """Whether C&C decomposes this layer of ``decomposable_layers``: a Linear, or a conv that is not grouped."""
    return isinstance(m, nn.Linear) or factorizable(m)


def layer_dims(m: nn.Module) -> tuple[int, int, tuple[int, int]]:
    """(inputs, outputs, kernel) of a Conv2d, or of a Linear as the 1x1 conv it is (a matrix)."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, (1, 1)
    return m.in_channels, m.out_channels, tuple(m.kernel_size)


def weight_4d(m: nn.Module) -> torch.Tensor:
    """A conv's weight, or a Linear's as a 1x1 conv's (out, in, 1, 1): one Tucker-2 code path for both."""
    return m.weight[:, :, None, None] if isinstance(m, nn.Linear) else m.weight


# --------------------------------------------------------------------------- the block


class FactorizedConv(nn.Sequential):
    """1x1 (C_in->r_in) -> kxk (r_in->r_out) -> 1x1 (r_out->C_out, original bias); plain convs only.

    For a 1x1 original it is two 1x1 convs (C_in->r, r->C_out) and the original stride and padding
    sit on the first one (both are linear and pointwise, so the order does not matter).
    """

    def __init__(self, conv: nn.Conv2d, r_in: int, r_out: int):
        kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        has_bias = conv.bias is not None
        if conv.kernel_size == (1, 1):
            if r_in != r_out:
                raise ValueError(f"a 1x1 conv factorises with one rank; got r_in={r_in}, r_out={r_out}")
            layers = [
                nn.Conv2d(conv.in_channels, r_in, 1, conv.stride, conv.padding, conv.dilation,
                          bias=False, padding_mode=conv.padding_mode, **kw),
                nn.Conv2d(r_in, conv.out_channels, 1, bias=has_bias, **kw),
            ]
        else:
            layers = [
                nn.Conv2d(conv.in_channels, r_in, 1, bias=False, **kw),
                nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          bias=False, padding_mode=conv.padding_mode, **kw),
                nn.Conv2d(r_out, conv.out_channels, 1, bias=has_bias, **kw),
            ]
        super().__init__(*layers)
        self.ranks = (r_in, r_out)
        self.original_shape = tuple(conv.weight.shape)

    @torch.no_grad()
    def load_tucker(self, t: Tucker2, bias: torch.Tensor | None) -> "FactorizedConv":
        dtype = self[0].weight.dtype
        if len(self) == 2:  # 1x1: first = U_in^T, second = U_out @ core
            self[0].weight.copy_(t.u_in.T[:, :, None, None].to(dtype))
            self[1].weight.copy_((t.u_out @ t.core[:, :, 0, 0])[:, :, None, None].to(dtype))
        else:
            self[0].weight.copy_(t.u_in.T[:, :, None, None].to(dtype))
            self[1].weight.copy_(t.core.to(dtype))
            self[2].weight.copy_(t.u_out[:, :, None, None].to(dtype))
        if bias is not None:
            self[-1].bias.copy_(bias)
        return self

    def extra_repr(self) -> str:
        return f"ranks(in,out)={self.ranks}, original={self.original_shape}"


class FactorizedLinear(nn.Sequential):
    """A hidden Linear (in -> out) at rank r: Linear in -> r (no bias), Linear r -> out (the original bias). The
    truncated SVD, as ``tucker2`` gives it for the matrix seen as a 1x1 conv. A net's big hidden Linears
    (a VGG-style 4096-wide classifier, a CNN's flatten-to-dense layer) are most of its bytes."""

    def __init__(self, linear: nn.Linear, r_in: int, r_out: int):
        if r_in != r_out:
            raise ValueError(f"a Linear factorises with one rank; got r_in={r_in}, r_out={r_out}")
        kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        super().__init__(nn.Linear(linear.in_features, r_in, bias=False, **kw),
                         nn.Linear(r_in, linear.out_features, bias=linear.bias is not None, **kw))
        self.ranks = (r_in, r_out)
        self.original_shape = tuple(linear.weight.shape)

    @torch.no_grad()
    def load_tucker(self, t: Tucker2, bias: torch.Tensor | None) -> "FactorizedLinear":
        dtype = self[0].weight.dtype
        self[0].weight.copy_(t.u_in.T.to(dtype))
        self[1].weight.copy_((t.u_out @ t.core[:, :, 0, 0]).to(dtype))
        if bias is not None:
            self[1].bias.copy_(bias)
        return self

    def extra_repr(self) -> str:
        return f"rank={self.ranks[0]}, original={self.original_shape}"


FACTORIZED_TYPES = (FactorizedConv, FactorizedLinear)


def factorize_layer(layer: nn.Module, r_in: int, r_out: int, t: Tucker2 | None = None) -> nn.Module:
    """``factorize_conv`` for a Conv2d, the two-Linear block at rank min(r_in, r_out) for a Linear."""
    if not isinstance(layer, nn.Linear):
        return factorize_conv(layer, r_in, r_out, t)
    t = tucker2(weight_4d(layer)) if t is None else t
    r = min(r_in, r_out)
    block = FactorizedLinear(layer, r, r)
    return block.load_tucker(truncate(t, r, r), None if layer.bias is None else layer.bias.detach())


def factorize_conv(conv: nn.Conv2d, r_in: int, r_out: int, t: Tucker2 | None = None) -> FactorizedConv:
    """The block for ``conv`` at ranks (r_in, r_out), from its (possibly scaled) Tucker-2 ``t``."""
    if not factorizable(conv):
        raise ValueError("only groups=1 nn.Conv2d layers are factorised")
    t = tucker2(conv.weight) if t is None else t
    if conv.kernel_size == (1, 1):  # a matrix: the core is square r x r
        r_in = r_out = min(r_in, r_out)
    block = FactorizedConv(conv, r_in, r_out)
    return block.load_tucker(truncate(t, r_in, r_out), None if conv.bias is None else conv.bias.detach())


# --------------------------------------------------------------------------- module swapping


def swap_modules(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool],
                 replace_fn: Callable[[nn.Module, str], nn.Module]) -> list[str]:
    """Replace every submodule for which ``filter_fn(module, fqn)`` holds (torchao style).

    Returns the names replaced, in model order.
    """
    targets = [(n, m) for n, m in model.named_modules() if n and filter_fn(m, n)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replace_fn(module, name))
    return [n for n, _ in targets]


def hidden_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The dense ``nn.Linear`` layers C&C may factorise: all but the last in model order, the classifier
    (``unlearn.classifier_head``'s rule: the patch cuts its inputs, and it is small), none inside a block."""
    inside = {f"{n}.{i}" for n, m in model.named_modules() if isinstance(m, FactorizedLinear) for i in range(len(m))}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [(n, m) for n, m in linears[:-1] if type(m) is nn.Linear and n not in inside]


def decomposable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """What C&C decomposes, in model order: the dense Conv2d layers (grouped ones too, which it lists as kept dense:
    ``factorizable``) and the hidden Linears."""
    keep = {n for n, m in conv_layers(model) if isinstance(m, nn.Conv2d)} | {n for n, _ in hidden_linears(model)}
    return [(n, m) for n, m in model.named_modules() if n in keep]


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv layers in model order: dense ``nn.Conv2d`` and whole ``FactorizedConv`` blocks (not their parts)."""
    out, inside = [], set()
    for name, m in model.named_modules():
        if isinstance(m, FactorizedConv):
            inside.update(f"{name}.{i}" for i in range(len(m)))
            out.append((name, m))
        elif isinstance(m, nn.Conv2d) and name not in inside:
            out.append((name, m))
    return out


# --------------------------------------------------------------------------- rebuilding a cleaned model


def build_base(spec) -> nn.Module:
    """The (dense) network of ``spec``: zoo model or user factory with the spec's kwargs."""
    from .load import _import_factory
    from .zoo import REGISTRY, create_model

    if spec.arch in REGISTRY:
        return create_model(spec.arch, **spec.arch_kwargs)
    return _import_factory(spec.arch)(**spec.arch_kwargs)


def build_factorized(spec, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a cleaned model: base arch, layers in ``spec.factorized`` swapped, weights loaded strictly."""
    from .errors import UserError
    from .load import to_native_layout
    from .zoo import REGISTRY

    model = build_base(spec)
    if spec.arch in REGISTRY:  # zoo models are rebuilt with native (torchvision) key names
        sd, _ = to_native_layout(sd)
    layers = dict(model.named_modules())
    for name, entry in spec.factorized.items():
        conv = layers.get(name)
        ranks = entry.get("ranks") if isinstance(entry, dict) else entry
        if not isinstance(conv, (nn.Conv2d, nn.Linear)) or not ranks or len(ranks) != 2:
            raise UserError(f"card lists factorised layer {name!r} with ranks {ranks!r}, which the model "
                            f"{spec.arch} does not have; use the card written with this checkpoint")
    swap_modules(
        model,
        lambda m, n: n in spec.factorized,
        lambda m, n: (FactorizedLinear if isinstance(m, nn.Linear) else FactorizedConv)(m, *_ranks(spec.factorized[n])),
    )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise UserError(f"the weights do not fit the factorised {spec.arch} of the card ({first[0].strip()[:160]}); "
                        "keep the checkpoint and its card together") from None
    return model


def _ranks(entry) -> tuple[int, int]:
    r = entry["ranks"] if isinstance(entry, dict) else entry
    return int(r[0]), int(r[1])
