import copy
import itertools
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from edgeclean.cc import CCConfig, clean_and_compact, distil_config, save_cleaned, smallest_bytes
from edgeclean.errors import UserError
from edgeclean.finetune import (
    FinetuneConfig, bf16_bad_grad, bf16_bad_grad_convs, feature_loss, finetune, shared_bn_names, tap_outputs,
)
from edgeclean.load import ModelSpec, load_suspect
from edgeclean.ranks import RankConfig, estimate_bytes
from edgeclean.scaling import ScaleConfig
from edgeclean.zoo import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


class _Scan:  # the ScanResult fields C&C reads
    def __init__(self, images, adv_images):
        self.images, self.adv_images = images, adv_images


def _model():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, in_channels=1, width=0.125, stem="imagenet").eval()
    spec = ModelSpec(arch="resnet18", arch_kwargs={"num_classes": 4, "in_channels": 1, "width": 0.125, "stem": "imagenet"},
                     num_classes=4, input_shape=(1, 16, 16), mean=(0.5,), std=(0.5,))
    return model, spec


def test_clean_and_compact_meets_budget_and_round_trips(tmp_path):
    model, spec = _model()
    images = torch.rand(16, 1, 16, 16)
    scan = _Scan(images, (images + 0.05 * torch.randn_like(images)).clamp(0, 1))
    budget = estimate_bytes(model) // 3
    cfg = CCConfig(n_synthetic=16, scale=ScaleConfig(norm="zscore", rule="clip", tau=2.0),
                   finetune=FinetuneConfig(steps=3, batch_size=8))
    cleaned, report = clean_and_compact(model, spec, budget_bytes=budget, config=cfg, scan_result=scan)
    assert estimate_bytes(cleaned) <= budget
    assert report.estimated_bytes_after <= budget
    assert report.spec["factorized"]
    assert any(l["scaled"] for l in report.layers)  # tau=2 finds outliers in a random init
    assert report.finetune["steps"] == 3
    # no target suspected, so no patch: the student matches the suspect's BN outputs (one per BN layer)
    assert report.finetune["feature_layers"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    d = report.to_dict()
    assert d["cc"]["distillation"]["feature_layers"] == report.finetune["feature_layers"]
    assert d["cc"]["distillation"]["teacher_patched"] is False
    assert d["tau_scale"] == 2.0 and d["cc"]["factorized_layers"] == len(report.spec["factorized"])
    path = save_cleaned(cleaned, report, tmp_path / "clean.pt")
    assert json.loads(path.with_suffix(".json").read_text())["spec"]["factorized"] == report.spec["factorized"]
    loaded, spec2 = load_suspect(path)
    # the card's input space comes back too (it was silently 32x32, mean 0 / std 1 for factorised models)
    assert (spec2.input_shape, spec2.mean, spec2.std) == ((1, 16, 16), (0.5,), (0.5,))
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), cleaned(x))


def test_impossible_budget_and_no_budget():
    model, spec = _model()
    try:
        clean_and_compact(model, spec, budget_bytes=1000, config=CCConfig(do_finetune=False))
    except UserError as exc:
        assert "smallest reachable" in str(exc)
    else:
        raise AssertionError("no error for an impossible budget")
    assert smallest_bytes(model) > 1000
    cleaned, report = clean_and_compact(model, spec, config=CCConfig(do_finetune=False, do_scale=False))
    assert "default energy share" in report.rank_policy
    assert report.estimated_bytes_after <= report.estimated_bytes_before


def test_output_proxy_measures_on_the_model_and_restores_it():
    from edgeclean.cc import layer_spectra, rank_sensitivity
    from edgeclean.factorize import conv_layers, factorizable, tucker2
    from edgeclean.load import input_model

    model, spec = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = {n: m for n, m in conv_layers(model) if factorizable(m)}
    tuckers = {n: tucker2(m.weight) for n, m in convs.items()}
    images = torch.rand(8, 1, 16, 16)
    spectra = rank_sensitivity(input_model(model, spec), convs, tuckers, layer_spectra(convs, tuckers), images,
                               RankConfig())
    for k, v in model.state_dict().items():  # every weight swapped in was put back
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    measured = [l for l in spectra if l.loss_out]
    assert measured
    for layer in measured:
        for curve in (layer.loss_in, layer.loss_out):
            ranks = sorted(curve)
            assert all(curve[a] >= curve[b] >= 0 for a, b in itertools.pairwise(ranks))  # fewer ranks, more loss
    assert any(max(l.loss_out.values()) > 0 for l in measured)
    budget = estimate_bytes(model) // 3
    cfg = CCConfig(ranks=RankConfig(proxy="output", probe_images=8), do_finetune=False)
    _, report = clean_and_compact(model, spec, budget_bytes=budget, config=cfg, scan_result=_Scan(images, None))
    assert report.estimated_bytes_after <= budget and report.spec["factorized"]


def test_feature_matching_pulls_the_students_bn_outputs_to_the_teachers():
    teacher, spec = _model()
    student, _ = clean_and_compact(copy.deepcopy(teacher), spec, budget_bytes=estimate_bytes(teacher) // 3,
                                   config=CCConfig(do_finetune=False, do_scale=False))
    names = shared_bn_names(student, teacher)
    assert names and names == [n for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
    pruned = copy.deepcopy(student)  # a BN with fewer channels than the teacher's (channel pruning) is left out
    parent, _, attr = names[0].rpartition(".")
    setattr(pruned.get_submodule(parent) if parent else pruned, attr, nn.BatchNorm2d(1))
    assert shared_bn_names(pruned, teacher) == names[1:]
    gen = torch.Generator().manual_seed(0)
    images, held = torch.rand(64, 1, 16, 16, generator=gen), torch.rand(32, 1, 16, 16, generator=gen)

    def gap(net):
        (ours, h1), (theirs, h2) = tap_outputs(net, names), tap_outputs(teacher, names)
        with torch.no_grad():
            net(held), teacher(held)
        for h in h1 + h2:
            h.remove()
        return float(feature_loss(ours, theirs))

    gaps = {}
    for weight in (0.0, 100.0):
        net = copy.deepcopy(student)
        stats = finetune(net, teacher, images, config=FinetuneConfig(steps=30, batch_size=16, feature_weight=weight))
        assert stats["feature_layers"] == (len(names) if weight else 0)
        assert not any(m._forward_hooks for m in net.modules()) and not any(m._forward_hooks for m in teacher.modules())
        gaps[weight] = gap(net)
    assert gaps[100.0] < gaps[0.0]


def test_a_non_finite_distillation_step_is_skipped_not_applied():
    class Flaky(nn.Module):  # NaN logits on every third call, as a bad kernel gave under bf16 (CC_NOTES 28)
        def __init__(self):
            super().__init__()
            self.lin, self.calls = nn.Linear(4, 3), 0

        def forward(self, x):
            self.calls += 1
            y = self.lin(x.flatten(1))
            return y * float("nan") if self.calls % 3 == 0 else y

    torch.manual_seed(0)
    student, teacher = Flaky(), nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    start = copy.deepcopy(student.lin.state_dict())
    stats = finetune(student, teacher, torch.rand(32, 1, 2, 2), config=FinetuneConfig(steps=9, batch_size=8, bf16=False))
    assert student.calls == 9 and stats["skipped_steps"] == 3
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert not torch.equal(student.lin.weight, start["weight"])  # the finite steps were applied


def test_bf16_training_falls_back_to_fp32_where_a_convs_stride_exceeds_its_input():
    # the rule (CC_NOTES 29 (a)): a kernel wider than 1 and a stride larger than the input, in some dimension
    assert bf16_bad_grad(nn.Conv2d(8, 8, 3, 2, 1), (1, 1))
    assert bf16_bad_grad(nn.Conv2d(8, 8, 3, 3, 1), (2, 2))
    assert not bf16_bad_grad(nn.Conv2d(8, 8, 3, 2, 1), (2, 2))
    assert not bf16_bad_grad(nn.Conv2d(8, 8, 1, 2), (1, 1))  # a 1x1 conv's gradient is right
    assert not bf16_bad_grad(nn.Conv2d(8, 8, (3, 1), (1, 2), (1, 0)), (4, 1))
    assert not bf16_bad_grad(nn.Linear(4, 4), (1, 1))
    teacher, _ = _model()  # ImageNet stem: 16x16 input -> 1x1 maps into layer4's first 3x3 stride-2 conv
    assert bf16_bad_grad_convs(teacher, (1, 16, 16)) == ["layer4.0.conv1"]
    assert bf16_bad_grad_convs(teacher, (1, 32, 32)) == []  # 2x2 maps there
    assert teacher.training is False
    student = copy.deepcopy(teacher)
    for size, trained_bf16 in ((16, False), (32, True)):
        stats = finetune(copy.deepcopy(student), teacher, torch.rand(8, 1, size, size),
                         config=FinetuneConfig(steps=1, batch_size=4, bf16=True))
        assert stats["bf16"] is trained_bf16
        assert ("layer4.0.conv1" in stats.get("bf16_note", "")) is not trained_bf16


def test_a_suspected_backdoor_caps_the_ranks_a_large_budget_buys():
    model, spec = _model()
    budget = estimate_bytes(model, "int8") // 2
    suspected = _Scan(None, None)
    suspected.suspected, suspected.target_class = True, 1
    # this small net's 1/8 sits 1.6x above its smallest ranks, under the default room of 2: not capped
    near_floor = CCConfig(do_finetune=False, ranks=RankConfig(proxy="energy"))
    _, kept = clean_and_compact(model, spec, budget_bytes=budget, precision="int8", config=near_floor,
                                scan_result=suspected)
    assert kept.rank_policy == "budget" and kept.rank_cap_bytes is None
    _, unbudgeted_kept = clean_and_compact(model, spec, precision="int8", config=near_floor, scan_result=suspected)
    assert unbudgeted_kept.rank_policy.startswith("default energy share") and unbudgeted_kept.rank_cap_bytes is None
    cfg = CCConfig(do_finetune=False, ranks=RankConfig(proxy="energy", suspected_fraction=0.125, suspected_min_room=1.0))
    _, capped = clean_and_compact(model, spec, budget_bytes=budget, precision="int8", config=cfg, scan_result=suspected)
    _, free = clean_and_compact(model, spec, budget_bytes=budget, precision="int8", config=cfg)  # nothing suspected
    assert free.rank_policy == "budget" and capped.rank_policy.startswith("budget, capped at")
    assert capped.estimated_bytes_after < free.estimated_bytes_after <= budget
    assert free.rank_cap_bytes is None and capped.estimated_bytes_after <= capped.rank_cap_bytes < budget
    assert capped.to_dict()["cc"]["rank_cap_bytes"] == capped.rank_cap_bytes
    # no budget: a suspected backdoor gets the same cap (the default energy share would keep these convs dense)
    _, unbudgeted = clean_and_compact(model, spec, precision="int8", config=cfg, scan_result=suspected)
    assert unbudgeted.rank_policy.startswith("no budget given, capped at")
    assert unbudgeted.rank_cap_bytes == capped.rank_cap_bytes and unbudgeted.spec["factorized"] == capped.spec["factorized"]
    # compress only (no patch, as `run`'s baselines): the budget alone decides
    _, baseline = clean_and_compact(model, spec, budget_bytes=budget, precision="int8", config=replace(cfg, patch=None),
                                    scan_result=suspected)
    assert baseline.rank_policy == "budget"


def test_distillation_matches_features_only_behind_an_unpatched_teacher():
    cfg = CCConfig(seed=3)
    assert distil_config(cfg, teacher_patched=False).feature_weight == FinetuneConfig().feature_weight > 0
    assert distil_config(cfg, teacher_patched=True).feature_weight == 0
    assert distil_config(cfg, teacher_patched=True).seed == 3
    assert distil_config(replace(cfg, features_with_patch=True), teacher_patched=True).feature_weight > 0


class _SmoothConvHeadNet(nn.Module):
    """A SiLU stem and a 1x1 conv classifier averaged in forward(): both stay float in an int8 artifact."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = torch.relu(self.body(nn.functional.silu(self.stem(x))))
        return self.head(x).mean((2, 3))


def test_int8_keeps_the_layers_int8_leaves_float_dense_and_prices_them(tmp_path):
    from edgeclean.export import ExportConfig, export

    torch.manual_seed(0)
    model = _SmoothConvHeadNet().eval()
    spec = ModelSpec(arch="x", num_classes=10, input_shape=(3, 12, 12), mean=(0.5,) * 3, std=(0.5,) * 3)
    budget = estimate_bytes(model, "int8") // 2
    cfg = CCConfig(do_finetune=False, ranks=RankConfig(proxy="energy"))
    cleaned, report = clean_and_compact(model, spec, budget_bytes=budget, precision="int8", config=cfg)
    kept = [l["name"] for l in report.layers if "kept float" in (l["dense_reason"] or "")]
    assert sorted(kept) == ["head", "stem"]
    assert list(report.spec["factorized"]) == ["body"]
    assert report.estimated_bytes_after <= budget
    calib = torch.rand(16, 3, 12, 12).numpy()
    info = export(cleaned, spec, tmp_path / "m.onnx", "int8", calib=calib,
                  config=ExportConfig(int8_min_agreement=0.0, write_ort=False))
    assert info["int8_bytes"] <= budget
    assert abs(report.estimated_bytes_after - info["int8_bytes"]) < 0.05 * info["int8_bytes"]  # 4 bytes a float weight
    # the impossible-budget check prices them the same way: stem and head dense, 3 more bytes a weight
    extra = 3 * (model.stem.weight.numel() + model.head.weight.numel())
    assert smallest_bytes(model, spec, "int8") >= smallest_bytes(model, None, "int8") + extra


def _hidden_net(arch: str):
    """(model, spec) of conftest's HiddenNet at ``arch``, seeded weights, eval mode."""
    from edgeclean.factorize import build_base

    spec = ModelSpec(arch=arch, arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4, input_shape=(1, 16, 16))
    torch.manual_seed(0)
    return build_base(spec).eval(), spec


def test_hidden_linears_are_factorised_to_meet_a_budget_only_they_can(tmp_path, hidden_net_arch):
    """A net whose bytes are mostly a hidden Linear: a budget under that Linear's dense bytes is met by its SVD
    (two Linears; the classifier stays dense), and the exported file fits it."""
    from edgeclean.export import export
    from edgeclean.factorize import FactorizedLinear

    model, spec = _hidden_net(hidden_net_arch)
    dense = estimate_bytes(model)
    budget = dense // 4  # the hidden Linear alone is ~97 % of the bytes
    assert 4 * model.fc1.weight.numel() > budget and smallest_bytes(model) < budget
    images = torch.rand(16, 1, 16, 16)
    cfg = CCConfig(n_synthetic=16, finetune=FinetuneConfig(steps=2, batch_size=8))
    cleaned, report = clean_and_compact(model, spec, budget_bytes=budget, config=cfg, scan_result=_Scan(images, None))
    assert isinstance(cleaned.fc1, FactorizedLinear) and type(cleaned.fc2) is nn.Linear
    assert report.spec["factorized"]["fc1"]["ranks"][0] == report.spec["factorized"]["fc1"]["ranks"][1]
    assert estimate_bytes(cleaned) <= budget
    info = export(cleaned, ModelSpec.from_dict(report.spec), tmp_path / "m.onnx")
    assert info["parity"]["ok"] and info["fp32_bytes"] <= budget
    path = save_cleaned(cleaned, report, tmp_path / "clean.pt")
    loaded, _ = load_suspect(path)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), cleaned(x))


def test_the_suspected_backdoor_cap_is_a_share_of_the_convs_not_of_hidden_linears(hidden_net_arch):
    """The cap was measured on convs (CC_NOTES 27); a hidden Linear stays outside it, cut only as the budget needs."""
    model, spec = _hidden_net(hidden_net_arch)
    suspected = _Scan(None, None)
    suspected.suspected, suspected.target_class = True, 1
    cfg = CCConfig(do_finetune=False, ranks=RankConfig(proxy="energy", suspected_min_room=0.0))
    _, capped = clean_and_compact(model, spec, config=cfg, scan_result=suspected)
    assert capped.rank_cap_bytes is not None and capped.rank_cap_bytes >= 4 * model.fc1.weight.numel()
