"""Foundation: zoo round-trips, safe loading, architecture detection, bad input."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from edgeclean import create_model, list_models, load_suspect
from edgeclean.errors import UserError
from edgeclean.load import ModelSpec, detect_arch, input_model, to_layout, to_native_layout
from edgeclean import zoo

from conftest import assert_one_line_error

ZOO_KWARGS = {"num_classes": 7, "in_channels": 1, "width": 0.25}


def _randomize_bn(model):
    """Non-trivial BN statistics so a wrong mapping of running stats would change outputs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("layout", ["torchvision", "research"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_roundtrip_autodetect(tmp_path, name, layout):
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, **ZOO_KWARGS))
    path = tmp_path / "suspect.pt"
    torch.save(to_layout(model.state_dict(), layout), path)
    loaded, spec = load_suspect(path, input_shape="1x28x28")
    assert spec.arch == name
    assert spec.num_classes == 7 and spec.input_shape == (1, 28, 28)
    assert spec.arch_kwargs["width"] == 0.25
    if name.endswith("resnet18") or name == "resnet34":
        assert spec.layout == layout
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_research_layout_uses_shortcut_and_linear_names():
    sd = to_layout(create_model("resnet18", width=0.125).state_dict(), "research")
    assert any(".shortcut." in k for k in sd) and "linear.weight" in sd
    assert not any("downsample" in k for k in sd) and "fc.weight" not in sd
    native, layout = to_native_layout(sd)
    assert layout == "research" and "fc.weight" in native


def test_imagenet_stem_and_preact_without_final_bn_detected():
    sd = zoo.resnet18(width=0.125, stem="imagenet").state_dict()
    assert detect_arch(sd) == ("resnet18", {"num_classes": 10, "in_channels": 3, "width": 0.125, "stem": "imagenet"})
    sd = zoo.preact_resnet18(width=0.125, final_bn=False).state_dict()
    name, kw = detect_arch(sd)
    assert name == "preact_resnet18" and kw["final_bn"] is False


def test_nested_dataparallel_and_safetensors(tmp_path):
    model = _randomize_bn(create_model("tiny_cnn", num_classes=4, in_channels=3))
    nested = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(nested, tmp_path / "nested.pth")
    loaded, spec = load_suspect(tmp_path / "nested.pth")
    assert spec.arch == "tiny_cnn" and spec.input_shape == (3, 32, 32)
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    loaded2, _ = load_suspect(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(loaded2(x), model(x))


def test_torchscript_archive_loads_weights_only(tmp_path):
    model = _randomize_bn(create_model("tiny_cnn", num_classes=3, in_channels=1))
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    loaded, spec = load_suspect(tmp_path / "ts.pt")
    assert spec.arch == "tiny_cnn"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


USER_MODEL = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.stem(x)))
        return self.head(x.mean((2, 3)))

def make(num_classes=10):
    return Net(num_classes)
'''


def test_user_factory_from_file(tmp_path):
    (tmp_path / "mynet.py").write_text(USER_MODEL)
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("mynet_ref", tmp_path / "mynet.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    model = _randomize_bn(mod.make(num_classes=5))
    torch.save(model.state_dict(), tmp_path / "user.pt")
    loaded, spec = load_suspect(tmp_path / "user.pt", arch=f"{tmp_path / 'mynet.py'}:make")
    assert spec.num_classes == 5 and spec.layout == "user"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # Without --arch the weights match no zoo model: the error says to pass --arch.
    with pytest.raises(UserError, match="--arch"):
        load_suspect(tmp_path / "user.pt")


def test_card_supplies_input_shape_and_normalisation(tmp_path):
    model = create_model("tiny_cnn", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    spec = ModelSpec(arch="tiny_cnn", input_shape=(1, 28, 28), mean=(0.5,), std=(0.25,))
    (tmp_path / "m.json").write_text(json.dumps({"spec": spec.to_dict()}))
    _, loaded = load_suspect(tmp_path / "m.pt")
    assert loaded.input_shape == (1, 28, 28) and loaded.mean == (0.5,) and loaded.std == (0.25,)
    raw = input_model(model, loaded)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(raw(x), model((x - 0.5) / 0.25))


def test_class_prior_from_user_or_card(tmp_path, cli):
    model = create_model("tiny_cnn", num_classes=2, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    _, plain = load_suspect(tmp_path / "m.pt", input_shape="1x28x28")
    assert plain.class_prior is None
    _, given = load_suspect(tmp_path / "m.pt", input_shape="1x28x28", class_prior="7,3")
    assert given.class_prior == pytest.approx((0.7, 0.3))  # shares, normalised
    (tmp_path / "m.json").write_text(json.dumps({"spec": given.to_dict()}))
    _, from_card = load_suspect(tmp_path / "m.pt")
    assert from_card.class_prior == pytest.approx((0.7, 0.3))
    assert ModelSpec.from_dict(given.to_dict()) == given
    _, overridden = load_suspect(tmp_path / "m.pt", class_prior=(1, 1))  # the user's value wins over the card's
    assert overridden.class_prior == (0.5, 0.5)
    for bad, says in (("0.2,0.3,0.5", "has 3 values but the model has 2 classes"), ("1,0", "must be positive"),
                      ("a,b", "not a list of numbers"), ("1,inf", "must be positive")):
        with pytest.raises(UserError, match=says):
            load_suspect(tmp_path / "m.pt", class_prior=bad)
    assert_one_line_error(cli("scan", tmp_path / "m.pt", "--class-prior", "1,2,3"), "--class-prior has 3 values")


def test_ambiguous_detection_lists_candidates(monkeypatch):
    twin = zoo.ZooEntry("tiny_twin", zoo.tiny_cnn, zoo._infer_tiny, "same as tiny_cnn")
    monkeypatch.setitem(zoo.REGISTRY, "tiny_twin", twin)
    with pytest.raises(UserError, match="tiny_cnn.*tiny_twin|tiny_twin.*tiny_cnn"):
        detect_arch(create_model("tiny_cnn").state_dict())


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path, cli):
    marker = tmp_path / "pwned"
    for i, payload in enumerate(({"weight": Evil(marker)}, Evil(marker))):
        path = tmp_path / f"evil{i}.pt"
        torch.save(payload, path)
        with open(tmp_path / f"evil{i}.pkl", "wb") as f:  # plain (non-zip) pickle too
            pickle.dump(payload, f)
        for p in (path, tmp_path / f"evil{i}.pkl"):
            result = cli("inspect", p)
            assert_one_line_error(result, "refuses")
            assert not marker.exists()


def test_pickled_module_refused_with_resave_hint(tmp_path, cli):
    torch.save(create_model("tiny_cnn"), tmp_path / "full.pt")
    result = cli("inspect", tmp_path / "full.pt")
    assert_one_line_error(result, "state_dict()")


def test_bad_inputs_exit_2_one_line(tmp_path, cli):
    assert_one_line_error(cli("inspect", tmp_path / "missing.pt"), "no such file")
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    assert_one_line_error(cli("inspect", tmp_path / "text.pt"), "not a pytorch checkpoint")
    torch.save(create_model("resnet18", width=0.25).state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("inspect", tmp_path / "trunc.pt"), "truncated")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert_one_line_error(cli("inspect", tmp_path / "trunc.safetensors"), "truncated")
    # Wrong architecture for the weights.
    assert_one_line_error(cli("inspect", tmp_path / "full.pt", "--arch", "vgg11_bn"), "do not fit --arch vgg11_bn")
    assert_one_line_error(cli("inspect", tmp_path / "full.pt", "--arch", "nonsense"), "--arch")
    # Shape mismatch: 3-channel weights with a 1-channel input.
    assert_one_line_error(cli("inspect", tmp_path / "full.pt", "--input-shape", "1x32x32"), "input shape")
    assert_one_line_error(cli("inspect", tmp_path / "full.pt", "--input-shape", "32x32"), "cxhxw")
    # A state_dict that is not a model of ours, with its keys truncated.
    sd = create_model("resnet18", width=0.25).state_dict()
    sd.pop("fc.weight")
    torch.save(sd, tmp_path / "partial.pt")
    assert_one_line_error(cli("inspect", tmp_path / "partial.pt", "--arch", "resnet18"), "fc.weight")
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    assert_one_line_error(cli("inspect", tmp_path / "nostate.pt"), "not a state_dict")


def test_inspect_json(tmp_path, cli):
    model = create_model("resnet18", num_classes=10, in_channels=1, width=0.25)
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    result = cli("inspect", tmp_path / "r18.pt", "--input-shape", "1x28x28", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    params = sum(p.numel() for p in model.parameters())
    assert info["arch"] == "resnet18" and info["params"] == params and info["fp32_bytes"] == 4 * params
    convs = [r for r in info["layers"] if r["kind"] == "conv"]
    assert len(convs) == 20  # 17 3x3 convs + 3 downsample 1x1
    # MACs of the stem conv: 28*28 outputs x 16 channels x (1 x 3 x 3).
    assert convs[0]["macs"] == 28 * 28 * 16 * 9
    table = cli("inspect", tmp_path / "r18.pt", "--input-shape", "1x28x28")
    assert table.returncode == 0 and "resnet18" in table.stdout and "layer4.1.conv2" in table.stdout


def test_version_and_help(cli):
    result = cli("--version")
    assert result.returncode == 0 and "0.1.0" in result.stdout
    assert "inspect" in cli("--help").stdout
