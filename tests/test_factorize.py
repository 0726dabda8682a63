import json

import pytest
import torch
from torch import nn

from edgeclean.factorize import (
    FactorizedConv, build_factorized, conv_layers, factorize_conv, full_ranks, reconstruct, scale,
    swap_modules, truncate, tucker2,
)
from edgeclean.load import ModelSpec, load_suspect
from edgeclean.zoo import create_model

CASES = [
    # c_in, c_out, k, stride, padding, dilation, bias, padding_mode
    (3, 16, 3, 1, 1, 1, False, "zeros"),
    (8, 12, 3, 2, 1, 1, True, "zeros"),
    (6, 10, 5, 1, 2, 2, False, "zeros"),
    (4, 9, (3, 1), (2, 1), (1, 0), 1, True, "reflect"),
    (16, 8, 3, 1, 0, 1, True, "circular"),
    (12, 20, 1, 1, 0, 1, True, "zeros"),
    (20, 12, 1, 2, 0, 1, False, "zeros"),
    (5, 7, 7, 2, 3, 1, True, "zeros"),
]


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,bias,mode", CASES)
def test_full_rank_block_reproduces_conv(c_in, c_out, k, stride, padding, dilation, bias, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, bias=bias, padding_mode=mode).double()
    block = factorize_conv(conv, *full_ranks(conv))
    assert isinstance(block, FactorizedConv)
    assert len(block) == (2 if conv.kernel_size == (1, 1) else 3)
    assert all(type(m) is nn.Conv2d for m in block)
    x = torch.randn(2, c_in, 11, 13, dtype=torch.float64)
    torch.testing.assert_close(block(x), conv(x), atol=1e-5, rtol=1e-5)
    # float32 as used in practice
    conv32 = conv.float()
    block32 = factorize_conv(conv32, *full_ranks(conv32))
    torch.testing.assert_close(block32(x.float()), conv32(x.float()), atol=1e-5, rtol=1e-4)


def test_hosvd_singular_values_and_truncation():
    torch.manual_seed(1)
    w = torch.randn(12, 6, 3, 3)
    t = tucker2(w)
    assert t.s_out.shape == (12,) and t.s_in.shape == (6,)
    torch.testing.assert_close(t.s_out, torch.linalg.svdvals(w.reshape(12, -1).double()))
    torch.testing.assert_close(reconstruct(t).float(), w, atol=1e-5, rtol=0)
    # HOSVD error bound: ||W - W_r||^2 <= discarded energy of both modes
    tr = truncate(t, 4, 5)
    err = (reconstruct(tr) - w.double()).pow(2).sum()
    bound = t.s_out[5:].pow(2).sum() + t.s_in[4:].pow(2).sum()
    assert err <= bound + 1e-9
    assert tr.core.shape == (5, 4, 3, 3)


def test_scaling_a_component_removes_its_direction():
    torch.manual_seed(2)
    w = torch.randn(8, 5, 3, 3)
    t = tucker2(w)
    f = torch.ones(8, dtype=torch.float64)
    f[0] = 0.0
    w2 = reconstruct(scale(t, out_factors=f))
    # the top mode-1 direction is gone from the output-channel space
    assert (t.u_out[:, 0] @ w2.reshape(8, -1)).abs().max() < 1e-10
    torch.testing.assert_close(torch.linalg.svdvals(w2.reshape(8, -1))[: 7], t.s_out[1:], atol=1e-8, rtol=1e-8)


def test_grouped_conv_is_not_factorised():
    conv = nn.Conv2d(8, 8, 3, groups=8)
    with pytest.raises(ValueError):
        factorize_conv(conv, 8, 8)


def test_swap_and_rebuild_from_card(tmp_path):
    torch.manual_seed(3)
    model = create_model("tiny_cnn", num_classes=4, in_channels=1).eval()
    x = torch.rand(3, 1, 12, 12)
    ref = model(x)
    ranks = {}

    def replace(m, n):
        ranks[n] = {"ranks": list(full_ranks(m))}
        return factorize_conv(m, *full_ranks(m))

    names = swap_modules(model, lambda m, n: isinstance(m, nn.Conv2d), replace)
    assert names == ["conv1", "conv2"]
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
    assert [n for n, _ in conv_layers(model)] == ["conv1", "conv2"]
    spec = ModelSpec(arch="tiny_cnn", arch_kwargs={"num_classes": 4, "in_channels": 1, "width": 1.0},
                     num_classes=4, input_shape=(1, 12, 12), factorized=ranks)
    path = tmp_path / "clean.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "clean.json").write_text(json.dumps({"spec": spec.to_dict()}))
    loaded, spec2 = load_suspect(path)
    assert spec2.factorized == ranks
    torch.testing.assert_close(loaded(x), ref, atol=1e-5, rtol=1e-4)
    # a card that does not match the weights is a user error, not a traceback
    spec.factorized = {"conv1": {"ranks": [1, 2]}}
    with pytest.raises(Exception) as info:
        build_factorized(spec, model.state_dict())
    assert type(info.value).__name__ == "UserError"


def test_onnx_export_has_three_convs(tmp_path):
    onnx = pytest.importorskip("onnx")
    conv = nn.Conv2d(8, 16, 3, 1, 1)
    block = factorize_conv(conv, 4, 6).eval()
    path = tmp_path / "b.onnx"
    torch.onnx.export(block, (torch.zeros(1, 8, 8, 8),), str(path), opset_version=17, dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops == ["Conv", "Conv", "Conv"]


@pytest.mark.parametrize("n_in,n_out,bias", [(20, 12, True), (9, 30, False)])
def test_full_rank_linear_block_reproduces_linear(n_in, n_out, bias):
    from edgeclean.factorize import FactorizedLinear, factorize_layer

    torch.manual_seed(4)
    linear = nn.Linear(n_in, n_out, bias=bias)
    r = min(n_in, n_out)
    block = factorize_layer(linear, r, r)
    assert isinstance(block, FactorizedLinear) and [type(m) for m in block] == [nn.Linear, nn.Linear]
    assert block[0].bias is None and (block[1].bias is not None) == bias
    x = torch.randn(5, 3, n_in)  # a Linear also acts on the last axis of a bigger tensor
    torch.testing.assert_close(block(x), linear(x), atol=1e-5, rtol=1e-4)
    # truncated: the best rank-2 approximation (Eckart-Young), the SVD's
    low = factorize_layer(linear, 2, 2)
    u, s, vh = torch.linalg.svd(linear.weight.detach().double())
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close((low[1].weight @ low[0].weight).double(), best, atol=1e-5, rtol=1e-4)


def test_hidden_linears_and_their_rebuild_from_card(tmp_path, hidden_net_arch):
    from edgeclean.factorize import FactorizedLinear, build_base, factorize_layer, hidden_linears

    spec = ModelSpec(arch=hidden_net_arch, arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4,
                     input_shape=(1, 16, 16), factorized={"fc1": {"ranks": [16, 16]}})
    model = build_base(spec).eval()
    assert [n for n, _ in hidden_linears(model)] == ["fc1"]  # the classifier (last Linear) is not one
    swap_modules(model, lambda m, n: n == "fc1", lambda m, n: factorize_layer(m, 16, 16))
    assert isinstance(model.fc1, FactorizedLinear) and hidden_linears(model) == []
    torch.save(model.state_dict(), tmp_path / "c.pt")
    (tmp_path / "c.json").write_text(json.dumps({"spec": spec.to_dict()}))
    loaded, _ = load_suspect(tmp_path / "c.pt")
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
