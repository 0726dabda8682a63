"""Clean & Compact (Phan et al., ECCV 2024): Tucker-2 rank scaling + rank pruning + synthetic fine-tuning.

    model, report = clean_and_compact(model, spec, budget_bytes=4_000_000, precision="fp32")

Stages (each timed in the report):
  1. decompose  every groups=1 Conv2d by Tucker-2 HOSVD, every hidden Linear by SVD (``factorize``);
  2. scale      rank components whose normalised singular value exceeds tau (``scaling``);
  3. allocate   ranks over all layers to fit the byte budget, or a default energy share (``ranks``);
  4. replace    each conv by its 3-conv block at those ranks (dense ones get the scaled weight back);
  5. data       synthetic images + adversarial versions from the suspect (``scan`` / ``synth`` / ``probe``);
  6. fine-tune  distil on clean synthetic images, unlearn on adversarial ones (``finetune``).
The returned model is the native network (normalisation not baked in) and ``report.spec`` is the
spec whose ``factorized`` field rebuilds it (``load.load_suspect`` with a card).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .export import int8_float_layers
from .factorize import (
    decomposable_layers, decomposes, factorize_layer, layer_dims, reconstruct, scale, truncate, tucker2, weight_4d,
)
from .finetune import FinetuneConfig, finetune, use_bf16
from .ranks import (
    LayerSpectrum, RankConfig, allocate_ranks, capped_budget, check_precision, cheapest_bytes, conv_bytes, dense_bytes,
    energy_ranks, estimate_bytes, interpolate, monotone, probe_ranks, rank_grids,
)
from .scaling import ScaleConfig, scale_mode
from .unlearn import PatchConfig, patch_head, success_rate


@dataclass
class CCConfig:
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    ranks: RankConfig = field(default_factory=RankConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    n_synthetic: int = 512  # clean synthetic images for fine-tuning (the scan's are reused first)
    synth_iterations: int | None = None  # None: synth's default
    # bf16 autocast while synthesising; None: where the CPU has native bf16 (2x faster per iteration on a
    # full-width ResNet-18, same BN-statistics loss: CC_NOTES section 9)
    synth_bf16: bool | None = None
    probe_eps: float | None = None  # None: probe's default
    do_scale: bool = True  # False: "synthetic fine-tuning alone" (ablation)
    do_finetune: bool = True  # False: "rank scaling alone" (ablation)
    # patch the teacher's head against a trigger reverse-engineered for the scan's suspected target
    # before distilling (unlearn.py); None: distil from the unpatched suspect
    patch: PatchConfig | None = field(default_factory=PatchConfig)
    # match the teacher's BN outputs (``FinetuneConfig.feature_weight``) also when the patch changed it. Off:
    # the student then copies the patch's cuts and the trigger features it left (CC_NOTES 24: -2.5 pt CA on
    # vgg11_ftrojan, vgg11_sig's ASR 4.0 -> 6.1 %, mean -0.1 pt over 10 backdoored suspects)
    features_with_patch: bool = False
    seed: int = 0
    progress: bool = False


@dataclass
class CCReport:
    spec: dict  # ModelSpec.to_dict() of the cleaned model (with its factorized ranks)
    budget_bytes: int | None
    precision: str
    rank_policy: str  # "budget", "default energy share", or either capped
    rank_cap_bytes: int | None  # where a suspected backdoor capped what the budget buys (RankConfig.suspected_fraction)
    estimated_bytes_before: int
    estimated_bytes_after: int
    layers: list[dict]
    timings: dict
    finetune: dict
    data: dict
    patch: dict | None  # unlearn.PatchResult of the teacher's head patch (None: no target suspected / off)
    spectra: list[dict]  # normalised singular values of a few layers, for the HTML report (report_spectra)
    config: dict

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tau_scale"] = self.config.get("scale", {}).get("tau") if self.config.get("do_scale") else None
        d["cc"] = {k: d[k] for k in ("rank_policy", "rank_cap_bytes", "budget_bytes", "precision", "estimated_bytes_before",
                                      "estimated_bytes_after", "timings", "data", "patch")}
        d["cc"]["scaling"] = self.config.get("scale") if self.config.get("do_scale") else "off"
        d["cc"]["factorized_layers"] = sum(1 for l in self.layers if l["ranks"])
        d["cc"]["scaled_components"] = sum(len(m["indices"]) for l in self.layers for m in l["scaled"].values())
        # whether the student also matched the teacher's BN outputs (0 layers behind a patched teacher: distil_config)
        d["cc"]["distillation"] = {k: self.finetune[k] for k in ("steps", "skipped_steps", "seconds", "bf16", "bf16_note",
                                                                  "feature_layers", "teacher_patched")
                                   if k in self.finetune}
        return d


def _layer_entry(name, conv, ranks, reason, scaled):
    return {"name": name, "shape": list(conv.weight.shape), "ranks": list(ranks) if ranks else None,
            "dense_reason": reason, "scaled": scaled}


def synthetic_data(model: nn.Module, spec, n: int, config: CCConfig, scan_result=None):
    """(images, adv_images, adv_index, info): the scan's synthetic set, topped up to ``n`` images.

    New images get adversarial versions only when the fine-tuning uses them (``adv_weight > 0``)."""
    from .probe import ProbeConfig, probe
    from .synth import SynthConfig, synthesize

    images, adv, adv_idx = [], [], []
    info = {"from_scan": 0, "synthesised": 0}
    if scan_result is not None and scan_result.images is not None:
        images.append(scan_result.images)
        if scan_result.adv_images is not None:
            adv.append(scan_result.adv_images)
            adv_idx.append(torch.arange(len(scan_result.images)))
        info["from_scan"] = len(scan_result.images)
    have = sum(len(x) for x in images)
    if have < n:
        synth_cfg = SynthConfig(seed=config.seed + 1, progress=config.progress)
        if config.synth_iterations:
            synth_cfg = replace(synth_cfg, iterations=config.synth_iterations)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(config.synth_bf16)):
            new = synthesize(model, spec, n - have, synth_cfg)
        images.append(new)
        if config.finetune.adv_weight > 0:
            probe_cfg = ProbeConfig() if config.probe_eps is None else ProbeConfig(eps=config.probe_eps)
            adv.append(probe(model, spec, new, probe_cfg).adv_images)
            adv_idx.append(torch.arange(have, have + len(new)))
        info["synthesised"] = len(new)
    images = torch.cat(images)
    adv_images = torch.cat(adv) if adv else None
    adv_index = torch.cat(adv_idx) if adv_idx else None
    return images, adv_images, adv_index, info


def distil_config(config: CCConfig, teacher_patched: bool) -> FinetuneConfig:
    """The fine-tuning config C&C distils with: its seed and progress bar, and no feature matching behind a
    teacher the patch changed unless ``config.features_with_patch``."""
    ft = replace(config.finetune, seed=config.seed, progress=config.progress or config.finetune.progress)
    return replace(ft, feature_weight=0.0) if teacher_patched and not config.features_with_patch else ft


def clean_and_compact(model: nn.Module, spec, budget_bytes: int | None = None, precision: str = "fp32",
                      config: CCConfig = CCConfig(), scan_result=None) -> tuple[nn.Module, CCReport]:
    """Remove a backdoor and shrink ``model`` to ``budget_bytes`` (ONNX artifact at ``precision``), data-free.

    ``scan_result`` (a ``scan.ScanResult``) lets the stage reuse the scan's synthetic images.
    The input model is not modified.
    """
    from .load import ModelSpec, input_model

    check_precision(precision)
    torch.manual_seed(config.seed)
    timings = {}
    teacher = model.eval()
    # the layers an int8 artifact keeps float (the classifier, a smooth stem) cost 4 bytes a weight there: priced
    # so, and left dense (a conv classifier and a SiLU stem put ColorNet's int8 files 7% over, CC_NOTES 26 (b))
    float_layers = int8_float_layers(model, spec) if precision == "int8" else None
    before = estimate_bytes(model, precision, float_layers)
    target = getattr(scan_result, "target_class", None) if getattr(scan_result, "suspected", False) else None
    # cleaning against a suspected target: ranks no larger than the cap (RankConfig.suspected_fraction), with or
    # without a budget (without one, a dense vgg11_sig kept 12.3 % ASR, CC_NOTES 27)
    cap_fraction = config.ranks.suspected_fraction if target is not None and config.patch is not None else None
    may_allocate = budget_bytes is not None or cap_fraction is not None  # (no budget: the cap may not apply, see 3.)

    # 5. synthetic data: distillation needs it, the "output" rank proxy measures on it
    images = adv_images = adv_index = None
    data_info = {}
    if config.do_finetune or (may_allocate and config.ranks.proxy == "output"):
        t0 = time.perf_counter()
        n = config.n_synthetic if config.do_finetune else config.ranks.probe_images
        images, adv_images, adv_index, data_info = synthetic_data(teacher, spec, n, config, scan_result)
        timings["data_s"] = time.perf_counter() - t0

    # 6a. patch a copy of the suspect against the scan's suspected target (pruning or unlearning its
    # shortcut); it is the distillation teacher and the student is compressed from it
    patch_info = None
    if config.do_finetune and config.patch is not None and target is not None:
        t0 = time.perf_counter()
        teacher = copy.deepcopy(model).eval()
        patched = patch_head(input_model(teacher, spec), teacher, images, target, config.patch,
                             known=scan_triggers(scan_result, spec, target))
        patch_info = patched.to_dict() if patched is not None else None
        timings["patch_s"] = time.perf_counter() - t0
    student = copy.deepcopy(teacher).eval()

    # 1. decompose
    t0 = time.perf_counter()
    convs = decomposable_layers(student)  # convs and hidden Linears
    tuckers = {n: tucker2(weight_4d(m)) for n, m in convs if decomposes(m)}
    timings["decompose_s"] = time.perf_counter() - t0

    # 2. scale
    t0 = time.perf_counter()
    raw_spectra = {n: {"out": t.s_out, "in": t.s_in} for n, t in tuckers.items()}  # for the report's charts
    scaled_info = {}
    if config.do_scale:
        for name, t in tuckers.items():
            info = {}
            f_out = f_in = None
            if "out" in config.scale.modes:
                f_out, info["out"] = scale_mode(t.s_out.numpy(), config.scale)
            if "in" in config.scale.modes and layer_dims(student.get_submodule(name))[2] != (1, 1):
                f_in, info["in"] = scale_mode(t.s_in.numpy(), config.scale)
            tuckers[name] = scale(t, None if f_out is None else torch.from_numpy(f_out),
                                  None if f_in is None else torch.from_numpy(f_in))
            scaled_info[name] = {k: asdict(v) for k, v in info.items() if v.indices}
    timings["scale_s"] = time.perf_counter() - t0

    # 3. allocate ranks
    t0 = time.perf_counter()
    spectra = [l for l in layer_spectra(dict(convs), tuckers) if l.name not in (float_layers or ())]
    other = before - dense_bytes(spectra, precision)
    # the cap is a share of the convs' bytes, as measured (CC_NOTES 27); hidden Linears sit outside it, so a net's MLP
    # head is cut only as far as the budget needs (in the cap, a UserNet lost 2.3 pt more CA: CC_NOTES 33 (d))
    linear = {l.name for l in spectra if isinstance(student.get_submodule(l.name), nn.Linear)}
    in_cap = [l for l in spectra if l.name not in linear]
    outside_cap = other + dense_bytes([l for l in spectra if l.name in linear], precision)
    alloc_budget = capped_budget(in_cap, budget_bytes, outside_cap, precision, config.ranks, cap_fraction)  # None: none
    allocating = alloc_budget is not None
    if allocating and config.ranks.proxy == "output":
        spectra = rank_sensitivity(input_model(student, spec), dict(convs), tuckers, spectra,
                                   images[: config.ranks.probe_images], config.ranks)
    cap = None
    if allocating:
        ranks = allocate_ranks(spectra, alloc_budget, other, precision, config.ranks)
        if budget_bytes is None or alloc_budget < budget_bytes:
            cap = alloc_budget
        policy = "budget" if cap is None else (
            f"{'budget' if budget_bytes is not None else 'no budget given'}, capped at {cap:,} bytes since a backdoor "
            f"is suspected (RankConfig.suspected_fraction: {cap_fraction:.1%} of the factorisable convs' bytes, or "
            "the smallest reachable size)")
    else:
        ranks = energy_ranks(spectra, precision, config.ranks)
        policy = f"default energy share {config.ranks.default_energy:.0%} per mode (no budget given)"
    timings["allocate_s"] = time.perf_counter() - t0

    # 4. replace
    t0 = time.perf_counter()
    layers = []
    factorized = {}
    for name, conv in convs:
        if name not in tuckers:
            layers.append(_layer_entry(name, conv, None, f"groups={conv.groups}: grouped/depthwise convs stay dense", {}))
            continue
        r = ranks.get(name)
        if r is None:
            with torch.no_grad():  # the scaled weight goes back into the dense layer
                conv.weight.copy_(reconstruct(tuckers[name]).reshape(conv.weight.shape).to(conv.weight.dtype))
            dense = conv_bytes(*layer_dims(conv), precision)
            reason = ("budget or cap met without factorising it (or factorised form not smaller)" if allocating
                      else "rank fraction above %.2f or no smaller than dense" % config.ranks.dense_fraction)
            if name in (float_layers or ()):
                reason = "kept float in the int8 artifact, so not factorised"
                dense = conv_bytes(*layer_dims(conv), "fp32")
            layers.append(_layer_entry(name, conv, None, reason, scaled_info.get(name, {})) | {"bytes": int(dense)})
            continue
        block = factorize_layer(conv, r[0], r[1], tuckers[name])
        parent_name, _, attr = name.rpartition(".")
        setattr(student.get_submodule(parent_name) if parent_name else student, attr, block)
        factorized[name] = {"ranks": list(block.ranks)}
        layers.append(_layer_entry(name, conv, block.ranks, None, scaled_info.get(name, {})))
    timings["replace_s"] = time.perf_counter() - t0

    # 6. fine-tune (on 5., the synthetic data, made before the allocation that may measure on it)
    ft_stats = {"steps": 0}
    if config.do_finetune:
        t0 = time.perf_counter()
        teacher_patched = patch_info is not None and bool(patched.used)  # the patch changed the teacher
        ft_stats = finetune(input_model(student, spec), input_model(teacher, spec), images, adv_images, adv_index,
                            distil_config(config, teacher_patched), target_class=target)
        ft_stats["target_class"], ft_stats["teacher_patched"] = target, teacher_patched
        timings["finetune_s"] = time.perf_counter() - t0
        if teacher_patched:
            # distillation can teach the shortcut back: the triggers the patch silenced, on the student
            net = input_model(student, spec).eval()
            patch_info["student_success"] = round(max(success_rate(net, patched.check, t) for t in patched.used), 4)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)

    new_spec = ModelSpec.from_dict({**spec.to_dict(), "factorized": factorized,
                                    "layout": "torchvision" if spec.layout == "research" else spec.layout})
    timings = {k: round(v, 2) for k, v in timings.items()}
    timings["total_s"] = round(sum(timings.values()), 2)
    report = CCReport(
        spec=new_spec.to_dict(), budget_bytes=budget_bytes, precision=precision, rank_policy=policy, rank_cap_bytes=cap,
        estimated_bytes_before=before, estimated_bytes_after=estimate_bytes(student, precision, float_layers),
        layers=layers, timings=timings, finetune=ft_stats, data=data_info, patch=patch_info,
        spectra=report_spectra(raw_spectra, layers, config.scale) if config.do_scale else [],
        config=json.loads(json.dumps(asdict(config), default=str)),
    )
    return student, report


def report_spectra(raw: dict, layers: list[dict], scale: ScaleConfig, limit: int = 12) -> list[dict]:
    """Normalised singular values (before scaling) for the report's charts: the layers with scaled
    components first, then the largest, at most ``limit`` charts. ``raw``: name -> {"out", "in"} values."""
    from .scaling import normalise

    by_name = {l["name"]: l for l in layers if l["name"] in raw}
    ranked = sorted(by_name, key=lambda n: (-sum(len(m.get("indices", [])) for m in by_name[n]["scaled"].values()),
                                            -by_name[n]["shape"][0] * by_name[n]["shape"][1]))
    out = []
    for name in ranked:
        for mode in (m for m in ("out", "in") if m in scale.modes):
            out.append({"layer": name, "mode": f"mode-{1 if mode == 'out' else 2} ({mode})",
                        "values": [round(float(v), 4) for v in normalise(raw[name][mode].numpy(), scale.norm)],
                        "scaled": (by_name[name]["scaled"].get(mode) or {}).get("indices", []), "threshold": scale.tau})
    return out[:limit]


def scan_triggers(scan_result, spec, target: int) -> list:
    """Triggers the scan found itself, as ``unlearn.Trigger``: the stripe grating that moved most
    synthetic images into ``target`` (a SIG-like trigger the mask / additive reverse engineering
    does not reproduce well: CC_NOTES section 12)."""
    from .probe import GratingConfig, gratings
    from .unlearn import Trigger

    pattern = getattr(scan_result, "grating_pattern", None)
    if not pattern or getattr(scan_result, "grating_target", None) != target:
        return []
    grating = (scan_result.config or {}).get("grating") or {}
    cfg = GratingConfig(**{k: v for k, v in grating.items() if k in GratingConfig.__dataclass_fields__})
    _, h, w = spec.input_shape
    atoms, meta = gratings(h, w, cfg.max_freq, cfg.phases)
    key = (pattern[0], int(pattern[1]), int(pattern[2]))
    if key not in meta:
        return []
    delta = cfg.amplitude * atoms[meta.index(key)].expand(1, spec.input_shape[0], h, w)
    return [Trigger("grating", target, float("nan"), delta=delta.clone())]


@torch.no_grad()
def rank_sensitivity(net: nn.Module, modules: dict[str, nn.Conv2d], tuckers: dict, spectra: list[LayerSpectrum],
                     images: torch.Tensor, config: RankConfig) -> list[LayerSpectrum]:
    """``spectra`` with measured loss curves: for each layer and mode, the KL divergence of ``net``'s
    output on ``images`` when only that mode of only that layer is truncated to each allowed rank
    (``config.probe_points`` ranks per mode are measured, the others interpolated).

    ``net`` (raw inputs) must run through ``modules``, whose weights are swapped and restored here.
    Unlike the energy bound, this sees how much each layer matters to the prediction.
    """
    net.eval()
    base = F.log_softmax(net(images).float(), 1)

    def curve(conv, grid, weight_at):
        """Loss at every rank of ``grid``; ``weight_at(r)`` is the conv's weight truncated to rank r."""
        measured = {}
        for r in probe_ranks(grid, config.probe_points):
            conv.weight.copy_(weight_at(r).reshape(conv.weight.shape).to(conv.weight.dtype))
            out = F.log_softmax(net(images).float(), 1)
            measured[r] = float(F.kl_div(out, base, log_target=True, reduction="batchmean"))
        return monotone(interpolate(measured, grid))

    out = []
    for layer in spectra:
        conv, t = modules[layer.name], tuckers[layer.name]
        original = conv.weight.detach().clone()
        grid_in, grid_out = rank_grids(layer, config)
        full_in, full_out = t.ranks
        try:
            if layer.is_1x1:  # one rank for both modes
                loss_out = loss_in = curve(conv, grid_out, lambda r, t=t: reconstruct(truncate(t, r, r)))
            else:
                loss_out = curve(conv, grid_out, lambda r, t=t, f=full_in: reconstruct(truncate(t, f, r)))
                loss_in = curve(conv, grid_in, lambda r, t=t, f=full_out: reconstruct(truncate(t, r, f)))
        finally:
            conv.weight.copy_(original)
        out.append(replace(layer, loss_in=loss_in, loss_out=loss_out))
    return out


def layer_spectra(modules: dict[str, nn.Module], tuckers: dict) -> list[LayerSpectrum]:
    """What the rank allocator needs of each decomposed conv or Linear (``tuckers``: name -> Tucker2)."""
    return [LayerSpectrum(n, *layer_dims(modules[n]), t.s_in.numpy(), t.s_out.numpy()) for n, t in tuckers.items()]


def default_energy_bytes(model: nn.Module, precision: str = "fp32", config: RankConfig = RankConfig()) -> int:
    """Estimated artifact size at the ranks C&C keeps with no budget (the default energy share)."""
    modules = {n: m for n, m in decomposable_layers(model) if decomposes(m)}
    spectra = layer_spectra(modules, {n: tucker2(weight_4d(m).detach()) for n, m in modules.items()})
    total = estimate_bytes(model, precision)
    for layer in spectra:
        r = energy_ranks([layer], precision, config)[layer.name]
        if r is not None:
            total -= conv_bytes(layer.c_in, layer.c_out, layer.kernel, precision) - \
                conv_bytes(layer.c_in, layer.c_out, layer.kernel, precision, r)
    return int(total)


def smallest_bytes(model: nn.Module, spec=None, precision: str = "fp32", config: RankConfig = RankConfig()) -> int:
    """The smallest artifact C&C can reach for ``model`` (every factorisable conv and hidden Linear at its minimum
    ranks; at int8 with a ``spec``, the layers int8 keeps float stay dense at 4 bytes a weight, as
    ``clean_and_compact`` leaves them)."""
    float_layers = int8_float_layers(model, spec) if precision == "int8" and spec is not None else None
    layers = [LayerSpectrum(name, *dims, np.ones(k), np.ones(k))
              for name, conv in decomposable_layers(model)
              if decomposes(conv) and name not in (float_layers or ())
              for dims in [layer_dims(conv)] for k in [min(dims[0], dims[1])]]
    total = estimate_bytes(model, precision, float_layers)
    for layer in layers:  # one layer at a time, so the sum rounds as it always has
        total -= dense_bytes([layer], precision) - cheapest_bytes([layer], precision, config)
    return int(total)


def smallest_fp32_bytes(model: nn.Module, spec=None) -> int:
    return smallest_bytes(model, spec, "fp32")


def save_cleaned(model: nn.Module, report: CCReport, path: str | Path, extra: dict | None = None) -> Path:
    """Write the cleaned state_dict and its card (``x.json`` beside ``x.pt``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = {"spec": report.spec, "cleaned_by": "clean_and_compact", "cc_report": report.to_dict(), **(extra or {})}
    for target, write in ((path, lambda f: torch.save(model.state_dict(), f)),
                          (path.with_suffix(".json"), lambda f: f.write(json.dumps(card, indent=2).encode()))):
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
