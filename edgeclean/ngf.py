"""NGF: natural-gradient fine-tuning of ONE layer with a little clean data (or synthetic data).

``ngf_finetune(model, spec, (x, y), NGFConfig())`` fine-tunes a single Conv2d / Linear layer
(default: the classifier head, i.e. the last Linear the forward pass runs) with a K-FAC / EKFAC
preconditioned, KL-clipped momentum step plus a diagonal-Fisher pull toward the start point;
every other parameter and every buffer stays bit-identical (the net runs in eval mode, so BN
running statistics are used, never updated).

Conventions (the tests check the step against exactly these definitions):

* The layer's parameters are one matrix ``W = [weight.reshape(out, -1) | bias]`` of shape
  ``(out, D)``, ``D = in (* kh * kw) (+ 1 for the bias)``.
* ``a`` is the layer input (unfolded patches for a conv, a trailing 1 for the bias) and ``g`` the
  gradient of the PER-SAMPLE loss w.r.t. the layer output, at each of the T output positions
  (T = 1 for Linear).  The activation factor is ``A = mean over (sample, position) of a a^T`` and
  the gradient factor ``G = (1/N) sum over (sample, position) of g g^T`` (the KFC factorisation
  of Grosse & Martens 2016; both reduce to the usual K-FAC factors for Linear).  Labels for ``g``
  are sampled from the model's own predictive distribution, so ``A (x) G`` approximates the true
  Fisher, not the empirical one.
* With column-stacking ``vec``, the Kronecker-factored Fisher of ``vec(W)`` is ``A (x) G``
  (``(A (x) G) vec(M) = vec(G M A)``).  K-FAC mode preconditions with ``(A (x) G + damping I)^-1``,
  computed in the eigenbases ``A = Qa diag(da) Qa^T``, ``G = Qg diag(dg) Qg^T``:
  ``V = Qg [(Qg^T M Qa) / (dg da^T + damping)] Qa^T``.  Damping is added to the Kronecker
  eigenvalues, i.e. to the whole product, not to each factor.
* EKFAC (George et al. 2018) keeps the eigenbasis but replaces ``dg da^T`` by ``S``, a running
  average of the squared per-sample gradients projected into that basis; ``S`` is reset to
  ``dg da^T`` when the basis is refreshed, so right after a refresh EKFAC equals K-FAC.
* Step: ``nu = min(1, sqrt(kl_clip / (lr^2 * <V, M>)))``, ``buf = momentum * buf + nu V``,
  ``W -= lr * buf`` (the KL clip of Ba et al. / the reference K-FAC code).
* Loss: mean cross-entropy on the data + ``(w / 2) * sum_i F_i (theta_i - theta0_i)^2`` with
  ``F`` a diagonal Fisher of the data log-likelihood at the start point.  Default ("batch"), as in
  the authors' code: the square of the gradient of the MEAN log-likelihood.  Option
  ("per-sample"): the textbook empirical Fisher, the mean of squared per-sample gradients.  The
  per-sample F is orders of magnitude larger at a trained point, and after preconditioning by
  ~F^-1 the penalty acts like a pull of strength ~w in every direction: with w = 5 the layer
  barely moves and no backdoor is removed (measured; see benchmarks/ngf_table.py).

When the chosen layer is the head (its output IS the logits) the frozen feature extractor runs
once over the data and the 500 iterations only touch the cached features: that is what makes a
full-width ResNet-18 finish in seconds on a CPU.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .load import ModelSpec, input_model

PRECONDITIONERS = ("ekfac", "kfac", "none")


@dataclass
class NGFConfig:
    """Reference settings of the NGF authors' code (K-FAC-Pytorch defaults + the CDA regulariser)."""

    layer: str | None = None  # module name in the model; None: the classifier head
    iterations: int = 500
    batch_size: int = 128
    lr: float = 1e-2
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `iterations` where lr /= 10
    momentum: float = 0.9
    damping: float = 1e-3
    stat_decay: float = 0.95
    cov_every: int = 10  # covariance (and EKFAC scale) update period, in steps
    eigen_every: int = 100  # eigen-basis refresh period, in steps
    kl_clip: float | None = 1e-3  # None: no clipping (plain SGD)
    fisher_weight: float = 5.0  # w of the Fisher regulariser; 0 turns it off
    # "batch": squared gradient of the mean log-likelihood, as the authors' code computes it (w = 5
    # was tuned for that); "per-sample": the textbook empirical Fisher, for which w = 5 pins the
    # layer (see benchmarks/ngf_table.py results in the module notes).
    fisher_estimate: str = "batch"
    preconditioner: str = "ekfac"  # "ekfac", "kfac" or "none" (plain SGD on the same layer)
    cache_features: bool = True  # run the frozen prefix once when the layer is the head
    # Labels for the gradient factor: "sampled" from the model (true Fisher, the reference) or
    # "empirical" (the data labels; deterministic, used by the tests).
    fisher_labels: str = "sampled"
    seed: int = 0


@dataclass
class NGFReport:
    layer: str
    kind: str  # "linear" or "conv"
    method: str
    iterations: int
    samples: int
    cached_features: bool
    seconds: float  # wall time of the whole call
    feature_seconds: float  # of which: running the frozen prefix to cache the head's inputs
    loss_start: float
    loss_end: float
    data_acc_start: float  # accuracy on the fine-tuning data itself
    data_acc_end: float
    relative_change: float  # ||W - W0|| / ||W0||
    mean_kl_scale: float  # average KL-clip factor nu (1.0: never clipped)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- pure math


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """``[weight.reshape(out, -1) | bias]``: the (out, D) matrix the factors act on."""
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    return torch.cat([w, layer.bias[:, None]], 1) if layer.bias is not None else w


def split_matrix(layer: nn.Module, mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of ``weight_matrix`` for a matrix of the same shape (gradient, update)."""
    if layer.bias is not None:
        return mat[:, :-1].reshape(layer.weight.shape), mat[:, -1]
    return mat.reshape(layer.weight.shape), None


def layer_patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer input as (N, T, D): unfolded conv patches or the Linear input, with a bias column."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        a = cols.transpose(1, 2)  # (N, T, C*kh*kw), same column order as weight.reshape(out, -1)
    else:
        a = x.reshape(x.shape[0], 1, x.shape[-1]) if x.ndim == 2 else x.reshape(x.shape[0], -1, x.shape[-1])
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], 2)
    return a


def output_grads(g: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the layer output as (N, T, out)."""
    if g.ndim == 4:  # conv: (N, out, oh, ow)
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def kfac_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A = mean over (n, t) of a a^T;  G = (1/N) sum over (n, t) of g g^T (g: per-sample loss grads)."""
    n = a.shape[0]
    a2 = a.reshape(-1, a.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    return a2.T @ a2 / a2.shape[0], g2.T @ g2 / n


def per_sample_grads(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(N, out, D): sum over positions of g_t a_t^T, the gradient of each sample's loss."""
    return torch.einsum("nto,ntd->nod", g, a)


def _eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh in float64; a factor with many zero / repeated eigenvalues (e.g. a conv whose patches
    are mostly zero padding) can make LAPACK's divide-and-conquer fail: retry with a jitter far
    below the damping, then with the QR-based solver on the CPU."""
    m = (m.double() + m.double().T) / 2
    if not torch.isfinite(m).all():
        raise UserError("NGF statistics became non-finite (NaN/inf activations or gradients); check the model and data")
    scale = float(m.diagonal().abs().mean()) or 1.0
    for jitter in (0.0, 1e-12, 1e-9):
        try:
            return torch.linalg.eigh(m + jitter * scale * torch.eye(len(m), dtype=m.dtype))
        except torch.linalg.LinAlgError:
            continue
    vals, vecs = torch.linalg.eig(m + 1e-9 * scale * torch.eye(len(m), dtype=m.dtype))
    order = vals.real.argsort()
    q, _ = torch.linalg.qr(vecs.real[:, order])  # re-orthonormalise
    return vals.real[order], q


def eigen_basis(A: torch.Tensor, G: torch.Tensor):
    """Eigen-decompositions of the factors (float64 for stability), eigenvalues clamped at 0."""
    da, qa = _eigh(A)
    dg, qg = _eigh(G)
    return da.clamp_min(0).to(A.dtype), qa.to(A.dtype), dg.clamp_min(0).to(G.dtype), qg.to(G.dtype)


def precondition(mat: torch.Tensor, qa, qg, scale: torch.Tensor, damping: float) -> torch.Tensor:
    """``Qg [(Qg^T M Qa) / (S + damping)] Qa^T``; with S = dg da^T this is (A (x) G + damping I)^-1 vec(M)."""
    return qg @ ((qg.T @ mat @ qa) / (scale + damping)) @ qa.T


def ekfac_scale(a: torch.Tensor, g: torch.Tensor, qa, qg, chunk: int = 32) -> torch.Tensor:
    """Mean over samples of (Qg^T grad_n Qa)^2: the EKFAC diagonal in the Kronecker eigenbasis."""
    total = None
    for i in range(0, a.shape[0], chunk):
        proj = qg.T @ per_sample_grads(a[i:i + chunk], g[i:i + chunk]) @ qa
        s = (proj ** 2).sum(0)
        total = s if total is None else total + s
    return total / a.shape[0]


def running(old: torch.Tensor | None, new: torch.Tensor, decay: float) -> torch.Tensor:
    return new if old is None else decay * old + (1 - decay) * new


def kl_scale(update: torch.Tensor, grad: torch.Tensor, lr: float, kl_clip: float | None) -> float:
    """nu = min(1, sqrt(kl_clip / (lr^2 <V, M>))): caps the predicted KL change of one step."""
    if kl_clip is None:
        return 1.0
    vg = float((update * grad).sum()) * lr * lr
    return 1.0 if vg <= 0 else min(1.0, math.sqrt(kl_clip / vg))


def lr_at(step: int, config: NGFConfig) -> float:
    """lr divided by ten at each milestone (a fraction of the run; step ceil(m * iterations))."""
    drops = sum(step >= math.ceil(m * config.iterations) for m in config.lr_milestones)
    return config.lr * (0.1 ** drops)


# --------------------------------------------------------------------------- model plumbing


def find_layer(model: nn.Module, spec: ModelSpec, name: str | None) -> tuple[str, nn.Module]:
    """The named Conv2d/Linear, or the classifier head: the last Linear/Conv2d the forward runs."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            candidates = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
            raise UserError(f"no layer named {name!r} in the model; choose one of {', '.join(candidates[-6:])} ...")
        layer = modules[name]
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise UserError(f"layer {name!r} is a {type(layer).__name__}; NGF needs a Linear or Conv2d layer")
    else:
        order: list[str] = []
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
                 for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
        training = model.training
        model.eval()  # a train-mode trace would update BN running statistics
        try:
            with torch.no_grad():
                input_model(model, spec)(torch.zeros(1, *spec.input_shape))
        finally:
            for h in hooks:
                h.remove()
            model.train(training)
        linears = [n for n in order if isinstance(modules[n], nn.Linear)]
        if not order:
            raise UserError("the model has no Linear or Conv2d layer for NGF to fine-tune")
        name = linears[-1] if linears else order[-1]
        layer = modules[name]
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
        raise UserError(f"layer {name!r} is a grouped or non-zero-padded conv, which K-FAC here does not handle; pass --ngf-layer with another layer")
    return name, layer


def check_data(data, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = data
    except (TypeError, ValueError):
        raise UserError("NGF data must be a pair (x, y) of tensors; give clean data or the scan's synthetic data") from None
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y).long().reshape(-1)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise UserError(f"clean data has shape {tuple(x.shape)} but the model takes N x {'x'.join(map(str, spec.input_shape))}; give data in the model's raw input space")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"clean data has {x.shape[0]} images but {y.shape[0]} labels; give one int label per image")
    if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
        # e.g. fashion-mnist:1% (ten classes) for a net trained on fewer or regrouped classes
        raise UserError(f"the clean labels run {int(y.min())}..{int(y.max())} but the model has {spec.num_classes} "
                        f"classes; give clean data labelled in 0..{spec.num_classes - 1} as this model's classes "
                        "(an .npz of x and y, or folder:DIR)")
    return x, y


class _LayerRunner:
    """Evaluates (layer input, layer output, logits) for a batch, from cached features when possible."""

    def __init__(self, net: nn.Module, layer: nn.Module, x: torch.Tensor, cache: bool):
        self.net, self.layer, self.x = net, layer, x
        self.features = None
        if cache:
            feats, logits = self._collect(x[:256])
            with torch.no_grad():
                direct = self._apply(feats)
            # The layer is the head exactly when its output is the logits: then the frozen prefix
            # never has to run again.
            if direct.shape == logits.shape and torch.allclose(direct, logits, atol=1e-4, rtol=1e-4):
                self.features = torch.cat([feats, self._collect(x[256:])[0]]) if len(x) > 256 else feats

    def _apply(self, inp):
        return self.layer._conv_forward(inp, self.layer.weight, self.layer.bias) if isinstance(self.layer, nn.Conv2d) \
            else F.linear(inp, self.layer.weight, self.layer.bias)

    def _collect(self, x):
        feats, outs = [], []
        handle = self.layer.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
        try:
            with torch.no_grad():
                for i in range(0, x.shape[0], 256):
                    outs.append(self.net(x[i:i + 256]))
        finally:
            handle.remove()
        return torch.cat(feats), torch.cat(outs)

    def __call__(self, idx: torch.Tensor):
        if self.features is not None:
            inp = self.features[idx]
            out = self._apply(inp)
            return inp, out, out
        seen = {}

        def hook(module, inputs, output):
            seen["inp"], seen["out"] = inputs[0].detach(), output

        handle = self.layer.register_forward_hook(hook)
        try:
            logits = self.net(self.x[idx])
        finally:
            handle.remove()
        return seen["inp"], seen["out"], logits


class _Frozen:
    """Context: only ``keep`` parameters require grad and the net is in eval mode; restores both."""

    def __init__(self, model: nn.Module, keep: list[nn.Parameter]):
        self.model, self.keep = model, {id(p) for p in keep}

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.training = self.model.training
        for p, _ in self.flags:
            p.requires_grad_(id(p) in self.keep)
        self.model.eval()  # BN uses its running stats and never updates them
        return self

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.training)


def diagonal_fisher(runner: _LayerRunner, layer: nn.Module, y: torch.Tensor, estimate: str = "per-sample",
                    chunk: int = 64) -> torch.Tensor:
    """Diagonal Fisher of log p(y|x) w.r.t. the layer matrix at the current weights, (out, D).

    "per-sample": the empirical Fisher, mean over samples of the squared per-sample gradient.
    "batch": the square of the gradient of the MEAN log-likelihood, as the NGF authors' code computes
    it; near a trained point that gradient is almost zero, so this "Fisher" is far smaller.
    """
    total = None
    for i in range(0, y.shape[0], chunk):
        idx = torch.arange(i, min(i + chunk, y.shape[0]))
        inp, out, logits = runner(idx)
        loss = F.cross_entropy(logits, y[idx], reduction="sum")  # sum: per-sample gradients
        (g,) = torch.autograd.grad(loss, out)
        grads = per_sample_grads(layer_patches(layer, inp), output_grads(g))
        s = (grads ** 2).sum(0) if estimate == "per-sample" else grads.sum(0)
        total = s if total is None else total + s
    total = total / y.shape[0]
    return total if estimate == "per-sample" else total ** 2


def _accuracy(runner: _LayerRunner, y: torch.Tensor) -> tuple[float, float]:
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, y.shape[0], 256):
            idx = torch.arange(i, min(i + 256, y.shape[0]))
            _, _, logits = runner(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            loss += float(F.cross_entropy(logits, y[idx], reduction="sum"))
    return correct / y.shape[0], loss / y.shape[0]


# --------------------------------------------------------------------------- the optimiser


class KFACState:
    """Running factors, eigenbasis and EKFAC scale of one layer."""

    def __init__(self, config: NGFConfig):
        self.config = config
        self.A = self.G = None
        self.qa = self.qg = self.scale = None

    def update(self, step: int, a: torch.Tensor, g: torch.Tensor) -> None:
        """Called with Fisher-sampled output grads; follows the cov/eigen schedule of ``config``."""
        c = self.config
        refresh = step % c.eigen_every == 0 or self.qa is None
        if step % c.cov_every == 0 or self.A is None:
            A, G = kfac_factors(a, g)
            self.A, self.G = running(self.A, A, c.stat_decay), running(self.G, G, c.stat_decay)
            if c.preconditioner == "ekfac" and not refresh:
                self.scale = running(self.scale, ekfac_scale(a, g, self.qa, self.qg), c.stat_decay)
        if refresh:
            da, self.qa, dg, self.qg = eigen_basis(self.A, self.G)
            self.scale = torch.outer(dg, da)

    def apply(self, mat: torch.Tensor) -> torch.Tensor:
        return precondition(mat, self.qa, self.qg, self.scale, self.config.damping)


def _optimise(runner: _LayerRunner, layer: nn.Module, params: list, y: torch.Tensor, config: NGFConfig):
    """The NGF loop on the layer matrix; returns (acc0, loss0, acc1, loss1, relative change, KL factors)."""
    gen = torch.Generator().manual_seed(config.seed)
    theta0 = weight_matrix(layer).detach().clone()
    fisher = diagonal_fisher(runner, layer, y, config.fisher_estimate) if config.fisher_weight > 0 else None
    acc0, loss0 = _accuracy(runner, y)
    state = KFACState(config)
    buf = torch.zeros_like(theta0)
    order, pos, nus = torch.randperm(len(y), generator=gen), 0, []
    for step in range(config.iterations):
        if pos + config.batch_size > len(y) and pos > 0:  # new epoch, fresh shuffle
            order, pos = torch.randperm(len(y), generator=gen), 0
        idx = order[pos:pos + config.batch_size]
        pos += config.batch_size
        inp, out, logits = runner(idx)
        if config.preconditioner != "none" and (step % config.cov_every == 0 or step % config.eigen_every == 0):
            if config.fisher_labels == "empirical":
                sampled = y[idx]
            else:  # labels from the model's own distribution: the true Fisher
                sampled = torch.multinomial(F.softmax(logits.detach(), 1), 1, generator=gen).squeeze(1)
            (gs,) = torch.autograd.grad(F.cross_entropy(logits, sampled, reduction="sum"), out, retain_graph=True)
            state.update(step, layer_patches(layer, inp), output_grads(gs))
        grads = torch.autograd.grad(F.cross_entropy(logits, y[idx]), params)
        mat = torch.cat([grads[0].reshape(grads[0].shape[0], -1)] + ([grads[1][:, None]] if len(grads) > 1 else []), 1)
        with torch.no_grad():
            theta = weight_matrix(layer)
            if fisher is not None:  # gradient of (w/2) sum F (theta - theta0)^2
                mat = mat + config.fisher_weight * fisher * (theta - theta0)
            lr = lr_at(step, config)
            update = state.apply(mat) if config.preconditioner != "none" else mat
            nu = kl_scale(update, mat, lr, config.kl_clip)
            nus.append(nu)
            buf.mul_(config.momentum).add_(update, alpha=nu)
            w, b = split_matrix(layer, theta - lr * buf)
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
    acc1, loss1 = _accuracy(runner, y)
    with torch.no_grad():
        change = float((weight_matrix(layer) - theta0).norm() / theta0.norm().clamp_min(1e-12))
    return acc0, loss0, acc1, loss1, change, nus


def ngf_finetune(model: nn.Module, spec: ModelSpec, data, config: NGFConfig = NGFConfig()):
    """Fine-tune one layer of ``model`` in place on ``data = (x, y)`` (raw input space); return (model, report).

    ``data`` may be clean images with their labels, or (data-free) synthetic images labelled with
    the suspect's clean predictions plus adversarial images labelled with the clean prediction of
    their source image (see ``datafree_data``).
    """
    if config.preconditioner not in PRECONDITIONERS:
        raise UserError(f"unknown NGF preconditioner {config.preconditioner!r}; use one of {', '.join(PRECONDITIONERS)}")
    if config.fisher_labels not in ("sampled", "empirical"):
        raise UserError(f"unknown fisher_labels {config.fisher_labels!r}; use 'sampled' or 'empirical'")
    if config.fisher_estimate not in ("per-sample", "batch"):
        raise UserError(f"unknown fisher_estimate {config.fisher_estimate!r}; use 'per-sample' or 'batch'")
    if config.iterations < 1 or config.batch_size < 1:
        raise UserError("NGF needs iterations >= 1 and batch_size >= 1")
    x, y = check_data(data, spec)
    name, layer = find_layer(model, spec, config.layer)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    start = time.perf_counter()
    with _Frozen(model, params):
        runner = _LayerRunner(input_model(model, spec), layer, x, config.cache_features)
        feature_seconds = time.perf_counter() - start
        # On cached features every op is a small matrix product; extra threads only add
        # synchronisation (10x slower eigh on a busy 2-core machine), so run them on one thread.
        threads = torch.get_num_threads()
        if runner.features is not None:
            torch.set_num_threads(1)
        try:
            acc0, loss0, acc1, loss1, change, nus = _optimise(runner, layer, params, y, config)
        finally:
            torch.set_num_threads(threads)
    report = NGFReport(
        layer=name, kind="conv" if isinstance(layer, nn.Conv2d) else "linear",
        method="ngf-" + config.preconditioner if config.preconditioner != "none" else "sgd-layer",
        iterations=config.iterations, samples=int(len(y)), cached_features=runner.features is not None,
        seconds=time.perf_counter() - start, feature_seconds=feature_seconds, loss_start=loss0, loss_end=loss1, data_acc_start=acc0,
        data_acc_end=acc1, relative_change=change, mean_kl_scale=sum(nus) / len(nus), config=asdict(config),
    )
    return model, report


# --------------------------------------------------------------------------- data-free data


def datafree_data(synthetic: torch.Tensor, clean_pred: torch.Tensor, adversarial: torch.Tensor | None = None,
                  adversarial_source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for data-free NGF: synthetic images with the suspect's clean predictions, plus
    adversarial images labelled with the clean prediction of the image they were made from.

    ``adversarial_source[i]`` is the index into ``synthetic`` of adversarial image ``i``; by default
    adversarial image i comes from synthetic image i (repeating the set if there are more).
    """
    x, y = [synthetic], [clean_pred.long().reshape(-1)]
    if adversarial is not None and len(adversarial):
        src = adversarial_source if adversarial_source is not None else torch.arange(len(adversarial)) % len(synthetic)
        x.append(adversarial)
        y.append(y[0][src.long()])
    return torch.cat(x).float(), torch.cat(y)


def data_from_scan(result) -> tuple[torch.Tensor, torch.Tensor]:
    """``datafree_data`` from an ``edgeclean.scan.ScanResult``: its synthetic ``images`` with their
    ``clean_pred``, and ``adv_images`` (adversarial image i was made from synthetic image i)."""
    if getattr(result, "images", None) is None or getattr(result, "clean_pred", None) is None:
        raise UserError("the scan result carries no synthetic images / clean predictions; rerun the scan")
    return datafree_data(result.images, result.clean_pred, getattr(result, "adv_images", None))


def clean_data(source: str, spec: ModelSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``--clean-data SOURCE`` -> (x, y): a ``.npz`` file, an image folder, or any ``edgeclean.data``
    source such as ``fashion-mnist:1%`` (a seeded, class-balanced share of the TRAINING split)."""
    from pathlib import Path

    from .data import parse_dataset

    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        source = f"npz:{source}"
    elif path.is_dir():
        source = f"folder:{source}"
    ds = parse_dataset(source, seed).train()
    return check_data((ds.x, ds.y), spec)


# --------------------------------------------------------------------------- baselines


@dataclass
class FinetuneConfig:
    """Plain SGD fine-tuning: ``layers="all"`` (BackdoorBench's FT defence) or one layer's name /
    ``"head"`` (the same-layer baseline NGF is compared against: no preconditioning, no regulariser)."""

    layers: str = "all"
    iterations: int = 500
    batch_size: int = 128
    lr: float = 1e-2
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # all-layer fine-tuning only
    bn_train: bool = True  # all-layer: update BN statistics as ordinary fine-tuning does
    seed: int = 0


def finetune_baseline(model: nn.Module, spec: ModelSpec, data, config: FinetuneConfig = FinetuneConfig()):
    """Fine-tune in place with plain momentum SGD; return (model, report dict)."""
    if config.layers != "all":
        ngf_config = NGFConfig(
            layer=None if config.layers == "head" else config.layers, iterations=config.iterations,
            batch_size=config.batch_size, lr=config.lr, lr_milestones=config.lr_milestones,
            momentum=config.momentum, kl_clip=None, fisher_weight=0.0, preconditioner="none", seed=config.seed,
        )
        model, report = ngf_finetune(model, spec, data, ngf_config)
        return model, report.to_dict()
    x, y = check_data(data, spec)
    gen = torch.Generator().manual_seed(config.seed)
    net = input_model(model, spec)
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    was_training = model.training
    # Momentum SGD with weight decay written out (torch.optim's first step imports torch._dynamo:
    # seconds of start-up for 500 plain updates).
    bufs = [torch.zeros_like(p) for p in params]
    start = time.perf_counter()
    model.train(config.bn_train)
    order, pos, losses = torch.randperm(len(y), generator=gen), 0, []
    try:
        for step in range(config.iterations):
            lr = lr_at(step, config)
            if pos + config.batch_size > len(y) and pos > 0:
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos:pos + config.batch_size]
            pos += config.batch_size
            if len(idx) < 2 and config.bn_train:  # BN cannot train on one sample
                continue
            loss = F.cross_entropy(net(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g, buf in zip(params, grads, bufs):
                    if g is None:  # a parameter the forward does not use
                        continue
                    buf.mul_(config.momentum).add_(g + config.weight_decay * p)
                    p.sub_(lr * buf)
            losses.append(float(loss.detach()))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return model, {
        "method": "ft-all", "iterations": config.iterations, "samples": int(len(y)),
        "seconds": time.perf_counter() - start, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "config": asdict(config),
    }


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy to fine-tune while keeping the suspect (benchmarks compare methods on one suspect)."""
    return copy.deepcopy(model)
