"""BackdoorBench metrics for torch models and for the ONNX files that actually ship.

    CA     clean accuracy on the test set
    ASR    attack success rate: share of triggered test images (true label != target) predicted as target
    R-Acc  robust accuracy: share of those triggered images still predicted as their TRUE label
    DER    defense effectiveness rating, BackdoorBench (Wu et al. 2022), values as fractions:
           DER = [max(0, ASR_ref - ASR) - max(0, CA_ref - CA) + 1] / 2, in [0, 1]; 0.5 = no change,
           where "ref" is the model before the defence (the suspect) and the other the defended model.

The arithmetic is on numpy arrays; the ONNX runner needs only onnxruntime and numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError


# --------------------------------------------------------------------------- pure arithmetic


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n (sound near 100%, unlike p +- 2 SE)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(min(1.0, centre + half))


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if labels.size else float("nan")


def attack_success_rate(pred_bd: np.ndarray, target: int) -> float:
    pred_bd = np.asarray(pred_bd)
    return float((pred_bd == target).mean()) if pred_bd.size else float("nan")


def robust_accuracy(pred_bd: np.ndarray, true_labels: np.ndarray) -> float:
    return accuracy(pred_bd, true_labels)


def redirect(pred_bd: np.ndarray, pred_clean: np.ndarray, true_labels: np.ndarray, target: int) -> dict:
    """A backdoor that moved rather than went: the class other than ``target`` (and other than each image's
    own) that the trigger sends the most images to, beyond what the same images without the trigger go to.

    ``pred_bd`` / ``pred_clean``: predictions on the triggered images and on the same images untriggered.
    ASR counts only the attacker's class; a cleaning that lowers that class as a whole can leave the trigger
    pushing images into another one (CC_NOTES 22 (g): a cleaned VGG-11 sent 40 % of triggered images to a
    class that got 1.4 % of them clean). A trigger that corrupts the image does the same to a clean model (SIG's
    stripes: 16-36 % on the suite's clean twins), so compare with one. Returns {"class", "rate", "clean_rate"}
    (shares of all the images)."""
    pred_bd, pred_clean, true_labels = np.asarray(pred_bd), np.asarray(pred_clean), np.asarray(true_labels)
    k = int(max(pred_bd.max(initial=0), pred_clean.max(initial=0), true_labels.max(initial=0), target)) + 1
    n = max(1, len(true_labels))
    trig = np.bincount(pred_bd[pred_bd != true_labels], minlength=k) / n
    clean = np.bincount(pred_clean[pred_clean != true_labels], minlength=k) / n
    gain = trig - clean
    gain[target] = -np.inf
    c = int(gain.argmax())
    return {"class": c, "rate": float(trig[c]), "clean_rate": float(clean[c])}


def der(ca: float, asr: float, ca_ref: float, asr_ref: float) -> float:
    """BackdoorBench DER of a defended model (ca, asr) against the original (ca_ref, asr_ref)."""
    return (max(0.0, asr_ref - asr) - max(0.0, ca_ref - ca) + 1.0) / 2.0


# --------------------------------------------------------------------------- predictors


class OnnxClassifier:
    """An .onnx classifier (fp32 or int8) on raw inputs, run with onnxruntime on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such file: {path}; check the path")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
            raise UserError(f"{path} could not be loaded by onnxruntime ({str(exc).splitlines()[0][:160]}); re-export it") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dims = list(inp.shape)
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        fixed = self.input_dims[0] if self.input_dims else None
        self.fixed_batch = fixed if isinstance(fixed, int) and fixed > 0 else None
        self.path = path

    def input_shape(self) -> tuple | None:
        dims = self.input_dims[1:]
        return tuple(dims) if len(dims) == 3 and all(isinstance(d, int) for d in dims) else None

    def _layout(self, x: np.ndarray) -> np.ndarray:
        dims = self.input_dims[1:]
        if len(dims) == 3 and all(isinstance(d, int) for d in dims) and tuple(dims) != tuple(x.shape[1:]):
            if tuple(dims) == (x.shape[2], x.shape[3], x.shape[1]):  # NHWC model
                return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            raise UserError(
                f"{self.path} expects inputs {dims}, the data set has {list(x.shape[1:])}; use the matching data set"
            )
        return x

    def logits(self, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
        x = self._layout(np.asarray(x, dtype=self.input_dtype))
        step = self.fixed_batch or batch_size
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i: i + step]
            if self.fixed_batch and len(chunk) < step:  # pad the last chunk of a fixed-batch model
                pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                out = self.session.run(None, {self.input_name: np.concatenate([chunk, pad])})[0][: len(chunk)]
            else:
                out = self.session.run(None, {self.input_name: chunk})[0]
            outs.append(np.asarray(out, dtype=np.float32).reshape(len(chunk), -1))
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def predict(self, x, batch_size: int = 500) -> np.ndarray:
        return self.logits(np.asarray(x), batch_size).argmax(1)


def torch_predict(model, x, batch_size: int = 500) -> np.ndarray:
    """Predicted classes of a torch module on raw inputs ``x`` (Tensor N x C x H x W)."""
    import torch

    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            preds.append(model(x[i: i + batch_size]).argmax(1))
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def predictor(model):
    """A function Tensor/ndarray -> predicted classes, for a torch module or an OnnxClassifier."""
    if isinstance(model, OnnxClassifier):
        return lambda x: model.predict(x.numpy() if hasattr(x, "numpy") else x)
    return lambda x: torch_predict(model, x)


# --------------------------------------------------------------------------- evaluation


def evaluate_predictor(predict, clean, poisoned=None, target: int | None = None) -> dict:
    """CA on ``clean`` (a data.Dataset); ASR and R-Acc on ``poisoned`` (true labels, != target)."""
    pred = predict(clean.x)
    out = {"ca": accuracy(pred, clean.y.numpy()), "n_clean": len(clean)}
    if poisoned is not None and target is not None:
        pred_bd = predict(poisoned.x)
        out.update({
            "asr": attack_success_rate(pred_bd, target),
            "racc": robust_accuracy(pred_bd, poisoned.y.numpy()),
            "n_poisoned": len(poisoned),
            "target": int(target),
        })
        # poisoned_test_set keeps the clean images whose label is not the target, in order
        untriggered = pred[clean.y.numpy() != target]
        if len(untriggered) == len(pred_bd):
            out["redirect"] = redirect(pred_bd, untriggered, poisoned.y.numpy(), target)
    return out


def evaluate(model, clean, attack: str | None = None, target: int | None = None,
             attack_params: dict | None = None, reference=None) -> dict:
    """CA, ASR, R-Acc (and DER against ``reference``) of ``model`` (torch raw-input module or OnnxClassifier)."""
    poisoned = None
    if attack and attack != "none":
        from .attacks import poisoned_test_set

        if target is None:
            raise UserError("an attack needs its target class; pass --attack-target K")
        poisoned = poisoned_test_set(clean, attack, target, attack_params)
    result = evaluate_predictor(predictor(model), clean, poisoned, target)
    if attack and attack != "none":
        result["attack"] = attack
    if reference is not None:
        ref = evaluate_predictor(predictor(reference), clean, poisoned, target)
        result["reference"] = ref
        if "asr" in result:
            result["der"] = der(result["ca"], result["asr"], ref["ca"], ref["asr"])
    return result


# --------------------------------------------------------------------------- files (the CLI's entry point)


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a readable JSON card; fix or remove it") from None


def find_card(*paths) -> tuple[dict, str | None]:
    """The first JSON card beside the given model files (``x.json`` for ``x.pt``/``x.onnx``) that names
    an attack; else the first card found. A cleaned model's card may lack the attack its suspect had."""
    found = []
    for p in paths:
        if p is None:
            continue
        card = Path(p).with_suffix(".json")
        if card.is_file():
            found.append((_read_json(card), str(card)))
    for card, where in found:
        if card.get("attack") not in (None, "", "none"):
            return card, where
    return found[0] if found else ({}, None)


def load_classifier(path: str | Path, arch=None, input_shape=None, mean=None, std=None):
    """(predictable model, input shape or None): an OnnxClassifier for .onnx, else a raw-input torch module."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        clf = OnnxClassifier(path)
        return clf, clf.input_shape()
    from .load import input_model, load_suspect

    net, spec = load_suspect(path, arch=arch, input_shape=input_shape, mean=mean, std=std)
    return input_model(net, spec), tuple(spec.input_shape)


def evaluate_files(model, dataset: str = "fashion-mnist", attack: str | None = None, target: int | None = None,
                   attack_param=(), card: str | None = None, reference: str | None = None, limit: int | None = None,
                   arch=None, input_shape=None, mean=None, std=None) -> dict:
    """Evaluate a checkpoint or .onnx file on a data set's test split, reading the trigger from a card."""
    from .attacks import attack_params, get_attack, parse_attack_params
    from .data import parse_dataset

    card_obj, card_file = (_read_json(Path(card)), card) if card else find_card(model, reference)
    card_attack = card_obj.get("attack")
    if attack is None:
        attack = card_attack if card_attack not in (None, "", "none") else None
    elif attack.lower() in ("none", "clean"):
        attack = None
    if attack is not None:
        attack = get_attack(attack).name
        if target is None:
            target = card_obj.get("target")
        if target is None:
            raise UserError(f"no target class for attack {attack}: pass --attack-target K (no card gives one)")
    test = parse_dataset(dataset).test()
    if limit:
        test = test.subset(range(min(limit, len(test))))
    params = {}
    if attack is not None:
        base = card_obj.get("attack_params", {}) if card_attack == attack else {}
        base = {k: v for k, v in base.items() if k in get_attack(attack).defaults}
        params = attack_params(attack, test.input_shape, **{**base, **parse_attack_params(attack_param)})
        if not 0 <= target < test.num_classes:
            raise UserError(f"--attack-target {target} is not a class of {dataset} (0..{test.num_classes - 1})")
    net, shape = load_classifier(model, arch, input_shape, mean, std)
    if shape is not None and tuple(shape) != tuple(test.input_shape) and not (len(shape) == 3 and tuple(shape) == (test.input_shape[1], test.input_shape[2], test.input_shape[0])):
        raise UserError(f"{model} takes inputs {'x'.join(map(str, shape))} but {dataset} has {'x'.join(map(str, test.input_shape))}; use the matching --dataset or --input-shape")
    ref_net = None
    if reference is not None:
        ref_net, _ = load_classifier(reference, None, None, None, None)
    result = evaluate(net, test, attack, target, params, ref_net)
    result.update({"model": str(model), "dataset": dataset, "card": card_file})
    if attack is not None:
        result["attack_params"] = params
    if reference is not None:
        result["reference_model"] = str(reference)
    return result
