"""Load an untrusted checkpoint safely and rebuild the network it belongs to.

A suspect checkpoint is untrusted by definition, so nothing in it may execute: state_dicts are
read with ``torch.load(weights_only=True)`` (a restricted unpickler that only builds tensors and
plain containers) or with safetensors; TorchScript archives are read with ``torch.jit.load``,
which interprets TorchScript, never Python. Everything else is refused with a message that says
how to re-save the model as a state_dict.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .zoo import REGISTRY, create_model

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
RESAVE_HINT = (
    "re-save it as a state_dict in a trusted environment: torch.save(model.state_dict(), 'model.pt')"
)


@dataclass
class ModelSpec:
    """What a later stage needs to know about a network besides its weights."""

    arch: str  # zoo name, "package.module:factory" or "path/file.py:factory"
    arch_kwargs: dict = field(default_factory=dict)
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "torchvision"  # key layout of the file: "torchvision" or "research"
    # Factorised layers (name -> {"ranks": [r_in, r_out]}) of a cleaned model; empty for suspects.
    factorized: dict = field(default_factory=dict)
    # Each class's share of the training data, when the user knows it (--class-prior or the card); None: even.
    # The scan judges its synthetic images' class balance against it (scan.prior_adjusted).
    class_prior: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.class_prior is not None:
            d["class_prior"] = list(self.class_prior)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("input_shape", "mean", "std", "class_prior"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)


# --------------------------------------------------------------------------- reading the file


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint without running any code from it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {path}; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the checkpoint file inside it")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/archive_format") for n in names):  # torch.export .pt2 layout
            raise UserError(
                f"{path} is a torch.export archive, which edgeclean does not load; {RESAVE_HINT}"
            )
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return _read_torchscript(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if not head.startswith((b"PK", b"\x80")):
        # torch.save writes a zip archive, or (legacy) a pickle whose first byte is the PROTO opcode.
        raise UserError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                        "give a .pt/.pth state_dict or a .safetensors file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; we explain errors ourselves
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle_error_types() as exc:
        raise UserError(_explain_load_error(path, exc)) from None
    return _find_state_dict(obj, path)


def pickle_error_types():
    import pickle

    return (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError, AttributeError, OSError, TypeError, IndexError)


def _explain_load_error(path: Path, exc: Exception) -> str:
    msg = str(exc)
    if "Weights only load failed" in msg or "GLOBAL" in msg:
        # The restricted unpickler met something other than tensors and plain containers.
        glob = ""
        for line in msg.splitlines():
            if "GLOBAL" in line or "Unsupported" in line:
                glob = " (" + line.strip().rstrip(".")[:120] + ")"
                break
        return (
            f"{path} holds pickled Python objects, not just tensors{glob}; unpickling them could run "
            f"code, so edgeclean refuses. If it is a full nn.Module, {RESAVE_HINT}"
        )
    with open(path, "rb") as f:
        zip_like = f.read(2) == b"PK"
    if zip_like or "central directory" in msg or "zip archive" in msg or isinstance(exc, EOFError):
        return f"{path} is truncated or corrupted (could not read it as a PyTorch checkpoint); copy it again or re-save it"
    return f"{path} is not a PyTorch checkpoint ({type(exc).__name__}); give a .pt/.pth state_dict or a .safetensors file"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is truncated or not a safetensors file ({exc}); copy it again or re-save it") from None


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    # TorchScript archives hold TorchScript code and TorchScript-restricted pickles; loading them
    # runs no Python from the file. Only the weights are kept.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure here is an unreadable input
        raise UserError(f"{path} looks like a TorchScript archive but could not be read ({type(exc).__name__}); {RESAVE_HINT}") from None
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values()
    )


def _find_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        what = type(obj).__name__
        keys = f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else ""
        raise UserError(
            f"{path} holds a {what}{keys}, not a state_dict of tensors; save model.state_dict() "
            f"(bare or under one of {', '.join(NESTED_KEYS)})"
        )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # DataParallel / DistributedDataParallel prefix.
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------- key layouts

# Backdoor research code (BackdoorBench, pytorch-cifar) names the shortcut and the head differently.
RESEARCH_TO_TORCHVISION = ((".shortcut.", ".downsample."), ("linear.", "fc."))


def to_native_layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if not any(".shortcut." in k or k.startswith("linear.") for k in sd):
        return sd, "torchvision"
    out = {}
    for k, v in sd.items():
        for old, new in RESEARCH_TO_TORCHVISION:
            if old.startswith("."):
                k = k.replace(old, new)
            elif k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out, "research"


def to_layout(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Inverse of ``to_native_layout``: write a native state_dict in ``layout``."""
    if layout == "torchvision":
        return dict(sd)
    out = {}
    for k, v in sd.items():
        for old, new in RESEARCH_TO_TORCHVISION:
            if old.startswith("."):
                k = k.replace(new, old)
            elif k.startswith(new):
                k = old + k[len(new):]
        out[k] = v
    return out


# --------------------------------------------------------------------------- architecture


def _shape_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _match_problems(expected: dict[str, tuple], sd: dict[str, torch.Tensor]) -> list[str]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    if wrong:
        problems.append(f"shape mismatches {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
    return problems


def _zoo_candidate(name: str, sd: dict[str, torch.Tensor]) -> tuple[dict | None, list[str]]:
    """kwargs for zoo entry ``name`` that reproduce ``sd`` exactly, or (None, problems)."""
    try:
        kwargs = REGISTRY[name].infer(sd)
    except (KeyError, IndexError) as exc:
        return None, [f"missing key {exc}"]
    with torch.device("meta"):  # build without allocating weights
        try:
            model = create_model(name, **kwargs)
        except (ValueError, RuntimeError) as exc:
            return None, [str(exc)]
    problems = _match_problems(_shape_signature(model), sd)
    return (None, problems) if problems else (kwargs, [])


def detect_arch(sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    matches = []
    for name in REGISTRY:
        kwargs, _ = _zoo_candidate(name, sd)
        if kwargs is not None:
            matches.append((name, kwargs))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(
            "could not detect the architecture: the weights match no zoo model "
            f"({', '.join(REGISTRY)}); pass --arch NAME, --arch package.module:factory or --arch file.py:factory"
        )
    raise UserError(
        f"ambiguous architecture: the weights match {', '.join(n for n, _ in matches)}; pass --arch with one of them"
    )


def _import_factory(arch: str):
    target, _, attr = arch.rpartition(":")
    if not target or not attr:
        raise UserError(f"--arch {arch!r} is neither a zoo name ({', '.join(REGISTRY)}) nor module:factory / file.py:factory")
    if target.endswith(".py"):
        file = Path(target)
        if not file.exists():
            raise UserError(f"--arch: no such file {file}; check the path")
        mod_name = f"edgeclean_user_{file.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code failed to import
            raise UserError(f"--arch: importing {file} failed ({type(exc).__name__}: {exc}); fix that file") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"--arch: cannot import {target} ({exc}); check the module is on PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--arch: {target} has no callable {attr!r}")
    return factory


def _guess_classes_and_channels(sd: dict[str, torch.Tensor]) -> dict:
    convs = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 4]
    heads = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    guess = {}
    if heads:
        guess["num_classes"] = int(heads[-1].shape[0])
    if convs:
        guess["in_channels"] = int(convs[0].shape[1])
    return guess


def build_model(arch: str, sd: dict[str, torch.Tensor]) -> tuple[nn.Module, dict]:
    """Instantiate ``arch`` for the weights in ``sd`` (native layout) and return (model, kwargs)."""
    if arch in REGISTRY:
        kwargs, problems = _zoo_candidate(arch, sd)
        if kwargs is None:
            raise UserError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}; pass the right --arch")
        return create_model(arch, **kwargs), kwargs
    factory = _import_factory(arch)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in _guess_classes_and_channels(sd).items() if k in params}
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"--arch {arch}: calling the factory with {kwargs} failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {arch}: the factory returned {type(model).__name__}, not an nn.Module")
    problems = _match_problems(_shape_signature(model), sd)
    if problems:
        raise UserError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}; pass the right --arch")
    return model, kwargs


# --------------------------------------------------------------------------- public API


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--input-shape {text!r} is not CxHxW (e.g. 3x32x32)")
    return dims


def read_card(path: Path) -> dict:
    """The JSON card beside a checkpoint (``model.json`` for ``model.pt``), if any."""
    card = path.with_suffix(".json")
    if card.exists():
        try:
            return json.loads(card.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{card} is not valid JSON; fix or remove it") from None
    return {}


def first_conv_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def load_suspect(
    path: str | Path,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    class_prior: tuple[float, ...] | str | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Load a checkpoint without running code from it; return the model (eval mode) and its spec.

    The model takes inputs normalised by ``spec.mean``/``spec.std``; ``input_model`` wraps it so it
    takes the raw input space (pixels in [0, 1]) every later stage works in. Values not given are
    read from a card (``<stem>.json`` with a ``spec`` object) beside the checkpoint, else inferred.
    """
    path = Path(path)
    sd = read_state_dict(path)
    card_spec = read_card(path).get("spec", {})
    # values given by the user win over the card's; the card's win over inference
    if card_spec.get("input_shape") and input_shape is None:
        input_shape = tuple(card_spec["input_shape"])
    mean = mean if mean is not None else card_spec.get("mean")
    std = std if std is not None else card_spec.get("std")
    class_prior = class_prior if class_prior is not None else card_spec.get("class_prior")
    if card_spec.get("factorized"):
        from .factorize import build_factorized  # cleaned models carry their ranks in the spec

        spec = ModelSpec.from_dict(card_spec)
        model = build_factorized(spec, sd)
        return _finish(model, spec, input_shape, mean, std, class_prior)
    native, layout = to_native_layout(sd)
    arch = arch or card_spec.get("arch")
    if arch is None:
        arch, _ = detect_arch(native)
    model, kwargs = build_model(arch, native if arch in REGISTRY else sd)
    model.load_state_dict(native if arch in REGISTRY else sd, strict=True)
    spec = ModelSpec(
        arch=arch,
        arch_kwargs=kwargs,
        num_classes=_guess_classes_and_channels(sd).get("num_classes", 0),
        layout=layout if arch in REGISTRY else "user",
    )
    return _finish(model, spec, input_shape, mean, std, class_prior)


def _finish(model, spec, input_shape, mean, std, class_prior=None):
    if isinstance(input_shape, str):
        input_shape = parse_shape(input_shape)
    if input_shape is None:
        c = first_conv_in_channels(model) or spec.input_shape[0]
        input_shape = (c, 32, 32)
    spec.input_shape = tuple(int(d) for d in input_shape)
    channels = spec.input_shape[0]
    spec.mean = _per_channel(mean, 0.0, channels, "--mean")
    spec.std = _per_channel(std, 1.0, channels, "--std")
    if any(s <= 0 for s in spec.std):
        raise UserError("--std values must be positive")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *spec.input_shape))
    except RuntimeError as exc:
        raise UserError(
            f"input shape {'x'.join(map(str, spec.input_shape))} does not fit the model "
            f"({str(exc).splitlines()[0][:160]}); pass the right --input-shape CxHxW"
        ) from None
    if out.ndim != 2:
        raise UserError(f"the model returns a tensor of shape {tuple(out.shape)}; edgeclean needs classifier logits (N x classes)")
    spec.num_classes = int(out.shape[1])
    spec.class_prior = _class_prior(class_prior, spec.num_classes)
    return model, spec


def _class_prior(values, num_classes: int) -> tuple[float, ...] | None:
    """``--class-prior`` as shares that sum to 1 (any positive numbers: "7,3" is "0.7,0.3")."""
    if values is None:
        return None
    values = _numbers(values, "--class-prior", "3,1,1,1,1,1,1,1,1,1")
    if len(values) != num_classes:
        raise UserError(f"--class-prior has {len(values)} values but the model has {num_classes} classes; "
                        "give each class's share of the training data")
    if not all(0 < v < math.inf for v in values):  # also rejects NaN
        raise UserError("--class-prior values must be positive (each class's share of the training data)")
    total = sum(values)
    return tuple(v / total for v in values)


def _numbers(values, flag: str, example: str) -> tuple[float, ...]:
    """A flag's numbers, from "0.5,0.5" / "0.5 0.5" or a sequence; a one-line error naming ``flag`` otherwise."""
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.replace(",", " ").split()]
        except ValueError:
            raise UserError(f"{flag} {values!r} is not a list of numbers (e.g. {example})") from None
    return tuple(float(v) for v in values)


def _per_channel(values, default: float, channels: int, flag: str) -> tuple[float, ...]:
    if values is None:
        return (default,) * channels
    values = _numbers(values, flag, "0.5,0.5,0.5")
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(f"{flag} has {len(values)} values but the input has {channels} channels; give one per channel")
    return values


class InputNormalized(nn.Module):
    """Takes raw inputs (pixels in [0, 1]) and applies the spec's normalisation before the net."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def input_model(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The model as a function of the raw input space; the network itself when no normalisation."""
    if all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std):
        return model
    # the wrapper takes the model's mode: code that saves and restores ``net.training`` must not
    # flip an eval-mode model into train mode through a fresh (train-mode) wrapper
    return InputNormalized(model, spec.mean, spec.std).train(model.training)
