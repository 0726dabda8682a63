"""Metrics on a constructed case, torch vs ONNX agreement, and the harness CLI on a tiny model."""

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeclean.cli import main
from edgeclean.data import Dataset
from edgeclean.metrics import OnnxClassifier, der, evaluate, redirect


def test_der_backdoorbench_definition():
    # ASR 100% -> 2%, CA 92% -> 90%: [0.98 - 0.02 + 1] / 2
    assert der(ca=0.90, asr=0.02, ca_ref=0.92, asr_ref=1.0) == pytest.approx(0.98)
    assert der(0.92, 1.0, 0.92, 1.0) == pytest.approx(0.5)  # nothing changed
    assert der(0.95, 1.0, 0.92, 0.5) == pytest.approx(0.5)  # gains are clipped at 0
    assert der(0.0, 0.0, 1.0, 1.0) == pytest.approx(0.5)


class Oracle(nn.Module):
    """Reads the class from pixel (0, 0) (label / 9); a white bottom-right 3x3 patch forces ``target``."""

    def __init__(self, target):
        super().__init__()
        self.register_buffer("onehot", torch.nn.functional.one_hot(torch.tensor(target), 10).float())

    def forward(self, x):
        code = x[:, 0, 0, 0:1] * 9  # N x 1
        logits = -(torch.arange(10, dtype=x.dtype)[None] - code).abs()
        patch = x[:, :, -3:, -3:].mean(dim=(1, 2, 3))[:, None]
        return logits + 1e5 * torch.relu(patch - 0.999) * self.onehot[None]


def _coded_dataset(n=60):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, 1, 12, 12), generator=g) * 0.9  # never a white patch by chance
    y = torch.arange(n) % 10
    x[:, 0, 0, 0] = y.float() / 9
    return Dataset(x, y, tuple(map(str, range(10))), "coded")


def _export(model, shape, path):
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(2, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    proto = onnx.load(str(path))
    proto.ir_version = 13  # onnxruntime 1.31 reads at most IR 13
    onnx.save(proto, str(path))


def test_evaluate_constructed_case_torch_and_onnx(tmp_path):
    ds = _coded_dataset()
    model = Oracle(target=4)
    res = evaluate(model, ds, "badnets", 4)
    assert res["ca"] == 1.0 and res["asr"] == 1.0 and res["racc"] == 0.0
    assert res["n_poisoned"] == 54  # the 6 images of class 4 are left out
    # a second model that ignores the trigger: ASR 0, R-Acc 1, DER against the oracle = (1 - 0 + 1) / 2
    ignore = Oracle(target=4)
    ignore.forward = lambda x: -(torch.arange(10, dtype=x.dtype)[None] - x[:, 0, 0, 0:1] * 9).abs()
    res2 = evaluate(ignore, ds, "badnets", 4, reference=model)
    assert res2["asr"] == 0.0 and res2["racc"] == 1.0 and res2["der"] == pytest.approx(1.0)
    _export(model, (1, 12, 12), tmp_path / "oracle.onnx")
    onnx_res = evaluate(OnnxClassifier(tmp_path / "oracle.onnx"), ds, "badnets", 4)
    assert onnx_res == res


def test_redirect_finds_a_backdoor_that_moved():
    """A cleaned model whose trigger now sends images to class 7 instead of the target 4: ASR 0, yet 7 gets
    every triggered image that is not of class 7 (1 in 9 clean: the label itself); the untouched oracle's own
    target is excluded, and a model the trigger does not move has nothing redirected."""
    ds = _coded_dataset()
    moved = Oracle(target=7)
    res = evaluate(moved, ds, "badnets", 4)
    assert res["asr"] == 0.0
    assert res["redirect"]["class"] == 7 and res["redirect"]["rate"] == pytest.approx(48 / 54)
    assert res["redirect"]["clean_rate"] == 0.0
    assert evaluate(Oracle(target=4), ds, "badnets", 4)["redirect"]["rate"] == 0.0  # the target is not a redirect
    y = np.array([0, 1, 2, 3])
    r = redirect(pred_bd=np.array([5, 5, 2, 5]), pred_clean=np.array([5, 1, 2, 3]), true_labels=y, target=9)
    assert r == {"class": 5, "rate": 0.75, "clean_rate": 0.25}  # 3 of 4 triggered, 1 of 4 already clean


def test_cli_make_evaluate_and_onnx(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 240
    y = torch.arange(n) % 4
    x = torch.rand((n, 1, 12, 12), generator=g) * 0.3
    for c in range(4):  # an easy task: the class is the brightest quadrant
        r, q = divmod(c, 2)
        x[y == c, :, r * 6:(r + 1) * 6, q * 6:(q + 1) * 6] += 0.6
    np.savez(tmp_path / "toy.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "toy.pt"
    runner = CliRunner()
    r = runner.invoke(main, ["suspects", "make", "--dataset", f"npz:{tmp_path / 'toy.npz'}", "--arch", "tiny_cnn",
                             "--width", "1", "--attack", "badnets", "--target", "2", "--epochs", "3", "--lr", "0.05",
                             "--batch-size", "32", "--seed", "1", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["spec"]["input_shape"] == [1, 12, 12] and card["spec"]["arch"] == "tiny_cnn"
    assert card["attack"] == "badnets" and card["target"] == 2 and card["poison_ratio"] == 0.1
    assert card["epochs"] == 3 and card["seed"] == 1 and card["train_seconds"] > 0
    assert 0 <= card["ca"] <= 1 and 0 <= card["asr"] <= 1

    r = runner.invoke(main, ["evaluate", str(out), "--dataset", f"npz:{tmp_path / 'toy.npz'}", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["attack"] == "badnets" and res["target"] == 2  # read from the card
    assert res["ca"] == pytest.approx(card["ca"]) and res["asr"] == pytest.approx(card["asr"])

    from edgeclean.load import input_model, load_suspect

    net, spec = load_suspect(out)
    _export(input_model(net, spec), spec.input_shape, tmp_path / "toy.onnx")
    r = runner.invoke(main, ["evaluate", str(tmp_path / "toy.onnx"), "--dataset", f"npz:{tmp_path / 'toy.npz'}",
                             "--card", str(out.with_suffix(".json")), "--reference", str(out), "--json"])
    assert r.exit_code == 0, r.output
    onnx_res = json.loads(r.output)
    assert abs(onnx_res["ca"] - res["ca"]) <= 0.001 and abs(onnx_res["asr"] - res["asr"]) <= 0.001
    assert "der" in onnx_res

    r = runner.invoke(main, ["evaluate", str(out), "--dataset", f"npz:{tmp_path / 'toy.npz'}"])
    assert r.exit_code == 0 and "ASR" in r.output and "CA" in r.output
    for bad in (["--attack", "nope"], ["--dataset", "mnist"], ["--dataset", "fashion-mnist"]):
        r = runner.invoke(main, ["evaluate", str(out), "--dataset", f"npz:{tmp_path / 'toy.npz'}", *bad])
        assert r.exit_code == 2, (bad, r.output)


def test_demo_suspect_is_backdoored():
    """The committed demo suspect: its card describes it and a slice of the test set confirms it."""
    from pathlib import Path

    from edgeclean.metrics import evaluate_files

    pt = Path(__file__).resolve().parent.parent / "models" / "demo_badnets_resnet18.pt"
    card = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size <= 5_000_000 and card["spec"]["input_shape"] == [1, 28, 28]
    assert card["dataset"] == "fashion-mnist" and card["attack"] == "badnets" and card["ca"] >= 0.90 and card["asr"] >= 0.95
    res = evaluate_files(str(pt), dataset="fashion-mnist", limit=1000)
    assert res["attack"] == "badnets" and res["target"] == card["target"]
    assert res["ca"] >= 0.88 and res["asr"] >= 0.95


def test_find_card_prefers_a_card_naming_an_attack(tmp_path):
    from edgeclean.metrics import find_card

    (tmp_path / "cleaned.json").write_text(json.dumps({"attack": "none", "spec": {}}))
    (tmp_path / "suspect.json").write_text(json.dumps({"attack": "sig", "target": 6}))
    card, where = find_card(tmp_path / "cleaned.onnx", tmp_path / "suspect.pt")
    assert card["attack"] == "sig" and where.endswith("suspect.json")
    card, where = find_card(tmp_path / "cleaned.onnx", None)
    assert card["attack"] == "none"
    assert find_card(tmp_path / "nothing.pt") == ({}, None)
