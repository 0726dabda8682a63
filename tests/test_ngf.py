"""NGF: the K-FAC / EKFAC step against explicit solves, freezing, the Fisher regulariser, baselines."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from edgeclean.errors import UserError
from edgeclean.load import ModelSpec
from edgeclean.ngf import (
    FinetuneConfig, KFACState, NGFConfig, clone_model, datafree_data, eigen_basis, finetune_baseline,
    kfac_factors, ngf_finetune, precondition, weight_matrix,
)
from edgeclean.zoo import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


SPEC = ModelSpec(arch="tiny_cnn", num_classes=10, input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))


def tiny(seed=0):
    torch.manual_seed(seed)
    model = create_model("tiny_cnn", num_classes=10, in_channels=1)
    with torch.no_grad():  # non-trivial BN statistics, so a BN update would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def vec(m):
    """Column-stacking vec: (A (x) G) vec(M) = vec(G M A)."""
    return m.T.reshape(-1)


def unvec(v, rows):
    return v.reshape(-1, rows).T


def explicit_kfac_update(A, G, grad, damping):
    """(A (x) G + damping I)^-1 vec(grad), solved densely in float64."""
    A, G, grad = A.double(), G.double(), grad.double()
    fisher = torch.kron(A, G) + damping * torch.eye(A.shape[0] * G.shape[0], dtype=torch.float64)
    return unvec(torch.linalg.solve(fisher, vec(grad)), G.shape[0])


def test_precondition_is_damped_kronecker_solve():
    torch.manual_seed(0)
    a, g = torch.randn(32, 3, 7, dtype=torch.float64), torch.randn(32, 3, 4, dtype=torch.float64)
    A, G = kfac_factors(a, g)
    assert torch.allclose(A, torch.einsum("ntd,nte->de", a, a) / (32 * 3))
    assert torch.allclose(G, torch.einsum("nto,ntp->op", g, g) / 32)
    grad = torch.randn(4, 7, dtype=torch.float64)
    da, qa, dg, qg = eigen_basis(A, G)
    got = precondition(grad, qa, qg, torch.outer(dg, da), 1e-3)
    assert torch.allclose(got, explicit_kfac_update(A, G, grad, 1e-3), rtol=1e-8, atol=1e-8)


def _head_inputs(model, x):
    feats = []
    h = model.fc.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        model((x - 0.5) / 0.25)
    h.remove()
    return feats[0]


@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
def test_first_ngf_step_on_head_matches_explicit_solve(preconditioner):
    model, (x, y) = tiny(), data()
    feats = _head_inputs(model, x).double()
    a = torch.cat([feats, torch.ones(len(x), 1, dtype=torch.float64)], 1)  # bias column last
    w0 = weight_matrix(model.fc).detach().double().clone()
    logits = a @ w0.T
    g = F.softmax(logits, 1) - F.one_hot(y, 10).double()  # per-sample dCE/dlogits (empirical labels)
    A, G = a.T @ a / len(x), g.T @ g / len(x)
    grad = g.T @ a / len(x)  # gradient of the mean loss
    lr, damping = 0.05, 1e-3
    expected = w0 - lr * explicit_kfac_update(A, G, grad, damping)
    cfg = NGFConfig(iterations=1, batch_size=64, lr=lr, damping=damping, kl_clip=None, fisher_weight=0.0,
                    fisher_labels="empirical", preconditioner=preconditioner)
    model, report = ngf_finetune(model, SPEC, (x, y), cfg)
    assert report.layer == "fc" and report.cached_features
    # EKFAC's scale starts at the K-FAC eigenvalues, so the first step is the K-FAC step.
    assert torch.allclose(weight_matrix(model.fc).detach().double(), expected, rtol=1e-4, atol=1e-5)


def test_first_ngf_step_on_conv_matches_explicit_solve():
    model, (x, y) = tiny(), data(n=24)
    conv = model.conv2
    seen = {}
    h = conv.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].detach(), out=o))
    loss = F.cross_entropy(model((x - 0.5) / 0.25), y, reduction="sum")
    h.remove()
    (g_out,) = torch.autograd.grad(loss, seen["out"], retain_graph=True)  # per-sample loss grads
    grad = torch.autograd.grad(loss / len(x), conv.weight)[0].reshape(16, -1)
    patches = F.unfold(seen["inp"], 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 72)
    gs = g_out.permute(0, 2, 3, 1).reshape(-1, 16)
    A = patches.T @ patches / patches.shape[0]
    G = gs.T @ gs / len(x)
    lr, damping = 0.02, 1e-3
    expected = conv.weight.detach().reshape(16, -1).double() - lr * explicit_kfac_update(A, G, grad, damping)
    cfg = NGFConfig(layer="conv2", iterations=1, batch_size=64, lr=lr, damping=damping, kl_clip=None,
                    fisher_weight=0.0, fisher_labels="empirical", preconditioner="kfac")
    model, report = ngf_finetune(model, SPEC, (x, y), cfg)
    assert report.kind == "conv" and not report.cached_features
    assert torch.allclose(model.conv2.weight.detach().reshape(16, -1).double(), expected, rtol=1e-4, atol=1e-5)


def test_ekfac_rescales_in_the_kronecker_eigenbasis():
    torch.manual_seed(0)
    cfg = NGFConfig(cov_every=1, eigen_every=100, stat_decay=0.9, damping=1e-3)
    state = KFACState(cfg)
    a1, g1 = torch.randn(16, 1, 5, dtype=torch.float64), torch.randn(16, 1, 3, dtype=torch.float64)
    a2, g2 = torch.randn(16, 1, 5, dtype=torch.float64), torch.randn(16, 1, 3, dtype=torch.float64)
    state.update(0, a1, g1)  # refresh: basis of (A1, G1), scale = dg da^T
    state.update(1, a2, g2)  # scale update in the same basis
    da, qa, dg, qg = eigen_basis(*kfac_factors(a1, g1))
    per_sample = torch.stack([qg.T @ torch.outer(g2[n, 0], a2[n, 0]) @ qa for n in range(16)])
    scale = 0.9 * torch.outer(dg, da) + 0.1 * (per_sample ** 2).mean(0)
    assert torch.allclose(state.scale, scale, rtol=1e-8, atol=1e-10)
    # The preconditioner is the inverse of Qg (x) Qa-rotated diag(scale + damping): solve it densely.
    q = torch.kron(qa, qg)  # column-stacking vec of Qg X Qa^T is (Qa (x) Qg) vec(X)
    fisher = q @ torch.diag(vec(scale) + 1e-3) @ q.T
    grad = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(vec(state.apply(grad)), torch.linalg.solve(fisher, vec(grad)), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("layer", [None, "conv2"])
def test_only_the_chosen_layer_changes(layer):
    model, (x, y) = tiny(), data()
    model.train()  # NGF must still leave BN statistics alone, and give the mode back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model, report = ngf_finetune(model, SPEC, (x, y), NGFConfig(layer=layer, iterations=12, batch_size=16,
                                                               cov_every=2, eigen_every=5))
    name = report.layer
    assert name == (layer or "fc")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= {f"{name}.weight", f"{name}.bias"}
    assert f"{name}.weight" in changed
    assert model.training and flags == {n: p.requires_grad for n, p in model.named_parameters()}


def fisher_distance(model0, model1, x, y):
    """sum_i F_i (theta_i - theta0_i)^2 on the head, F the empirical diagonal Fisher at model0."""
    feats = _head_inputs(model0, x)
    a = torch.cat([feats, torch.ones(len(x), 1)], 1)
    with torch.no_grad():
        g = F.softmax(a @ weight_matrix(model0.fc).T, 1) - F.one_hot(y, 10).float()
    fisher = torch.einsum("no,nd->nod", g, a).pow(2).mean(0)
    with torch.no_grad():
        return float((fisher * (weight_matrix(model1.fc) - weight_matrix(model0.fc)) ** 2).sum())


@pytest.mark.parametrize("estimate", ["batch", "per-sample"])
def test_fisher_regulariser_pulls_toward_start(estimate):
    model0, (x, y) = tiny(), data(n=64)
    dist = {}
    for w in (0.0, 5.0, 1e4):
        cfg = NGFConfig(iterations=60, batch_size=32, fisher_weight=w, fisher_estimate=estimate)
        model, _ = ngf_finetune(clone_model(model0), SPEC, (x, y), cfg)
        dist[w] = fisher_distance(model0, model, x, y)
    assert dist[1e4] < 0.5 * dist[0.0]
    assert dist[5.0] <= dist[0.0] * 1.001


def test_sgd_same_layer_and_all_layer_baselines():
    model0, (x, y) = tiny(), data()
    head, report = finetune_baseline(clone_model(model0), SPEC, (x, y), FinetuneConfig(layers="head", iterations=5))
    assert report["method"] == "sgd-layer" and report["layer"] == "fc"
    diff = {k for k, v in head.state_dict().items() if not torch.equal(v, model0.state_dict()[k])}
    assert diff == {"fc.weight", "fc.bias"}
    full, report = finetune_baseline(clone_model(model0), SPEC, (x, y), FinetuneConfig(iterations=3, batch_size=16))
    assert report["method"] == "ft-all"
    assert not torch.equal(full.conv1.weight, model0.conv1.weight)
    assert not full.training


def test_datafree_data_labels_adversarial_images_with_their_source_prediction():
    synth, clean = torch.rand(4, 1, 8, 8), torch.tensor([3, 1, 4, 1])
    adv = torch.rand(6, 1, 8, 8)
    x, y = datafree_data(synth, clean, adv, torch.tensor([0, 2, 2, 3, 1, 0]))
    assert x.shape == (10, 1, 8, 8)
    assert y.tolist() == [3, 1, 4, 1, 3, 4, 4, 1, 1, 3]


def test_bad_input_is_a_user_error():
    model, (x, y) = tiny(), data()
    with pytest.raises(UserError, match="no layer named"):
        ngf_finetune(model, SPEC, (x, y), NGFConfig(layer="nope"))
    with pytest.raises(UserError, match="BatchNorm2d"):
        ngf_finetune(model, SPEC, (x, y), NGFConfig(layer="bn1"))
    with pytest.raises(UserError, match="raw input space"):
        ngf_finetune(model, SPEC, (torch.rand(4, 3, 8, 8), y[:4]))
    with pytest.raises(UserError, match=r"labels run 10\.\.19 but the model has 10 classes; give clean data labelled in 0\.\.9"):
        ngf_finetune(model, SPEC, (x, y + 10))


def test_datafree_ngf_from_a_scan_result():
    from edgeclean.ngf import data_from_scan
    from edgeclean.scan import ScanResult

    model = tiny()
    images = torch.rand(12, 1, 8, 8)
    with torch.no_grad():
        clean = model((images - 0.5) / 0.25).argmax(1)
    adv = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    # Only the tensor fields matter here; the scan's summary fields are still growing.
    summary = {f.name: None for f in dataclasses.fields(ScanResult) if f.default is dataclasses.MISSING}
    result = ScanResult(**summary, images=images, clean_pred=clean, adv_images=adv,
                        adv_pred=torch.zeros(12, dtype=torch.long))
    x, y = data_from_scan(result)
    assert x.shape == (24, 1, 8, 8) and torch.equal(y, torch.cat([clean, clean]))
    model, report = ngf_finetune(model, SPEC, (x, y), NGFConfig(iterations=3, batch_size=8))
    assert report.samples == 24


def test_diagonal_fisher_estimates():
    from edgeclean.ngf import _LayerRunner, diagonal_fisher

    model, (x, y) = tiny(), data()
    runner = _LayerRunner(lambda v: model((v - 0.5) / 0.25), model.fc, x, cache=True)
    feats = _head_inputs(model, x)
    a = torch.cat([feats, torch.ones(len(x), 1)], 1)
    with torch.no_grad():
        g = F.softmax(a @ weight_matrix(model.fc).T, 1) - F.one_hot(y, 10).float()
    per_sample = torch.einsum("no,nd->nod", g, a)
    assert torch.allclose(diagonal_fisher(runner, model.fc, y), per_sample.pow(2).mean(0), atol=1e-6)
    assert torch.allclose(diagonal_fisher(runner, model.fc, y, "batch"), per_sample.mean(0).pow(2), atol=1e-7)
