"""ONNX export: BN folding, graph format, dynamic batch, parity gate, int8, ORT copy, CLI."""

import json
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeclean.errors import GateFailed, UserError
from edgeclean.export import ExportConfig, choose_precision, conv_bn_pairs, export, fold_batchnorm, with_int8_activations
from edgeclean.load import ModelSpec, input_model
from edgeclean.zoo import create_model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, so folding is actually exercised (fresh BNs are identities)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


SPEC = ModelSpec(arch="tiny_cnn", input_shape=(3, 16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def weight_scale(proto, module):
    """The scale initializer of ``module``'s int8 weight: the DequantizeLinear that reads '<module>.w'."""
    inits = {t.name: t for t in proto.graph.initializer}
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == f"{module}.w")
    return inits[dq.input[1]]


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def optimized_nodes(path, tmp_path):
    """The graph nodes onnxruntime runs after its optimisations (where QDQ pairs fuse into QLinearConv)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "opt.onnx")).graph.node


def assert_int8_close(fp32, q):
    """The int8 file's logits within 20% of the fp32 file's largest on seeded 3x8x8 inputs."""
    x = np.random.default_rng(4).random((8, 3, 8, 8), dtype=np.float32)
    ref = ort_run(fp32, x)
    assert np.max(np.abs(ort_run(q, x) - ref)) < 0.2 * np.max(np.abs(ref))


class ThreeConvNet(nn.Module):
    """A factorised (Tucker-2) layer as the C&C stage builds it: 1x1 -> kxk -> 1x1 plain convs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Sequential(
            nn.Conv2d(16, 4, 1, bias=False), nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.Conv2d(5, 16, 1, bias=True)
        )
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_fp32_export_graph(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3))
    out = tmp_path / "m" / "model.onnx"
    info = export(model, SPEC, out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert "BatchNormalization" not in ops(out)
    assert info["bn_folded_in_torch"] == 2 and info["bn_left_in_graph"] == 0
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert proto.ir_version <= 13
    # readable node names carry the module path
    names = [n.name for n in proto.graph.node]
    assert "conv1/Conv" in names and "conv2/Conv" in names and len(set(names)) == len(names)
    # dynamic batch: batch 3 runs and matches the PyTorch model on RAW inputs (normalisation is in the graph)
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    got = ort_run(out, x)
    with torch.no_grad():
        ref = input_model(model, SPEC)(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 10)
    assert np.max(np.abs(got - ref)) <= 1e-4
    par = info["parity"]
    assert par["ok"] and par["max_abs_diff"] <= 1e-4 and par["top1_agreement"] == 1.0
    # ORT-format copy loads and gives the same logits
    assert info["ort_path"] == str(out.with_suffix(".ort"))
    np.testing.assert_allclose(ort_run(out.with_suffix(".ort"), x), got, atol=1e-5)
    # nothing but the artifacts is left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.ort"]


def test_fold_batchnorm_is_exact_and_leaves_original():
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3))
    folded, pairs = fold_batchnorm(model)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the original is untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_preact_bn_before_conv_is_not_folded(tmp_path):
    model = randomize_bn(create_model("preact_resnet18", num_classes=10, in_channels=3, width=0.0625))
    pairs = dict(conv_bn_pairs(model))
    # conv1 -> bn2 inside a block is a pair; bn1 (BN -> ReLU -> conv) is not, nor the final BN.
    assert pairs["layer1.0.conv1"] == "layer1.0.bn2"
    assert "layer1.0.bn1" not in pairs.values() and "bn" not in pairs.values()
    info = export(model, ModelSpec(arch="preact_resnet18", input_shape=(3, 16, 16)), tmp_path / "p.onnx")
    assert info["bn_folded_in_torch"] == 8 and info["bn_total"] == 17
    assert info["bn_left_in_graph"] == 9  # 8 block bn1 + the final bn: they follow additions, not convs
    assert info["parity"]["ok"]


def test_three_conv_block_stays_three_convs(tmp_path):
    model = randomize_bn(ThreeConvNet())
    out = tmp_path / "f.onnx"
    info = export(model, ModelSpec(arch="three", input_shape=(3, 8, 8)), out)
    proto = onnx.load(str(out))
    inits = {i.name: i for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4  # stem + the three factor convs, none merged by onnxsim
    kernels = [tuple(inits[n.input[1]].dims) for n in convs[1:]]
    assert kernels == [(4, 16, 1, 1), (5, 4, 3, 3), (16, 5, 1, 1)]
    assert "BatchNormalization" not in ops(out)  # bn2 folded into the last 1x1 conv
    assert info["parity"]["ok"]


def test_parity_gate_failure_writes_nothing(tmp_path):
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3))
    out = tmp_path / "g.onnx"
    # An impossible tolerance: the real comparison runs and the gate must refuse the artifact.
    with pytest.raises(GateFailed, match="parity"):
        export(model, SPEC, out, config=ExportConfig(parity_atol=-1.0))
    assert list(tmp_path.iterdir()) == []


def test_bad_output_name_is_user_error(tmp_path):
    with pytest.raises(UserError, match=".onnx"):
        export(create_model("tiny_cnn"), SPEC, tmp_path / "model.bin")


def test_int8_quantisation(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3, width=4.0))
    calib = np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32)
    out = tmp_path / "q.onnx"
    info = export(model, SPEC, out, precision="int8", calib=calib, config=ExportConfig(int8_min_agreement=0.5))
    assert info["calibration"] == {"source": "given", "samples": 32}
    kinds = ops(out)
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    # per-channel int8 weights: one scale per output channel of the 3->32 and 32->64 convs
    proto = onnx.load(str(out))
    inits = {t.name: t for t in proto.graph.initializer}
    scales = sorted(tuple(inits[n.input[1]].dims) for n in proto.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 4)
    assert (32,) in scales and (64,) in scales
    assert out.with_suffix(".fp32.onnx").exists() and out.with_suffix(".ort").exists()
    assert info["int8_bytes"] == out.stat().st_size
    assert info["int8_bytes"] < 0.4 * info["fp32_bytes"]
    agreement = info["int8_agreement"]
    assert agreement["calibration"]["gated"] and not agreement["seeded_noise"]["gated"]
    lo, hi = agreement["calibration"]["ci95"]
    assert lo <= agreement["calibration"]["top1_agreement"] <= hi and hi >= 0.5  # what the gate let through
    assert 0.0 <= agreement["seeded_noise"]["top1_agreement"] <= 1.0
    # the reported agreement is what onnxruntime gives on those inputs
    a = ort_run(out.with_suffix(".fp32.onnx"), calib).argmax(1)
    b = ort_run(out, calib).argmax(1)
    assert info["int8_agreement"]["calibration"]["top1_agreement"] == pytest.approx(float(np.mean(a == b)))
    # the ORT-format copy is the same int8 model, already fused for the runtime
    np.testing.assert_allclose(ort_run(out.with_suffix(".ort"), calib), ort_run(out, calib), atol=1e-5)


def test_choose_precision():
    assert choose_precision(3_000_000, None).precision == "fp32"
    c = choose_precision(3_000_000, 4_000_000)
    assert (c.precision, c.fits) == ("fp32", True)
    c = choose_precision(8_000_000, 4_000_000)
    assert (c.precision, c.fits) == ("int8", True) and "exceeds the budget" in c.reason
    c = choose_precision(40_000_000, 4_000_000)
    assert (c.precision, c.fits) == ("int8", False) and "compress further" in c.reason


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeclean.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_export(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=1))
    torch.save(model.state_dict(), tmp_path / "suspect.pt")
    r = run_cli("export", "suspect.pt", "--input-shape", "1x28x28", "--mean", "0.3", "--std", "0.3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "export" / "suspect" / "model.onnx"
    assert out.exists() and "parity vs PyTorch" in r.stdout
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["spec"]["input_shape"] == [1, 28, 28] and card["export"]["parity"]["ok"]
    assert ort_run(out, np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    bad = run_cli("export", "suspect.pt", "--out", "x.txt", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and ".onnx" in bad.stderr


def test_choose_precision_with_int8_estimate_and_mode_restored(tmp_path):
    c = choose_precision(8_000_000, 4_000_000, int8_bytes_estimate=4_500_000)
    assert (c.precision, c.fits) == ("int8", False)
    model = create_model("tiny_cnn").train()
    export(model, SPEC, tmp_path / "t.onnx", config=ExportConfig(write_ort=False))
    assert model.training  # the caller's model keeps its mode


def test_int8_compact_format_changes_no_output(tmp_path):
    """The int8 file is onnxruntime's QDQ output (biases and input normalisation left float) made
    smaller (no all-zero Conv weight zero points, short names, no tool metadata), computing exactly the same;
    onnxruntime still fuses every factor conv of the 3-conv block into QLinearConv."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeclean.export import Int8Config, _quant_options, quantize_int8

    torch.manual_seed(0)
    model = randomize_bn(ThreeConvNet())
    spec = ModelSpec(arch="three", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    fp32 = tmp_path / "f.onnx"
    export(model, spec, fp32, config=ExportConfig(write_ort=False))
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    ours = tmp_path / "q.onnx"
    facts = quantize_int8(fp32, ours, calib)

    # the same quantisation, uncompacted (every zero point, the quantiser's names and metadata)
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib}])

        def get_next(self):
            return next(self.items, None)

    pre, plain = tmp_path / "pre.onnx", tmp_path / "plain.onnx"
    quant_pre_process(str(fp32), str(pre))
    graph = onnx.load(str(pre)).graph
    op_types = sorted({n.op_type for n in graph.node})
    # the default settings' quantiser options (calibration, float layers), as quantize_int8 passes them
    cfg = Int8Config()
    exclude, extra = _quant_options(graph.node, {t.name: t for t in graph.initializer}, cfg)
    assert {"input/Sub", "input/Div"} <= set(exclude) and extra["QuantizeBias"] is False
    quantize_static(str(pre), str(plain), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=cfg.per_tensor_max_channels <= 0,
                    reduce_range=facts["reduce_range"], op_types_to_quantize=op_types, nodes_to_exclude=exclude,
                    extra_options=extra)
    x = np.random.default_rng(4).random((8, 3, 8, 8), dtype=np.float32)
    got, ref = ort_run(ours, x), ort_run(plain, x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    assert ours.stat().st_size < plain.stat().st_size

    proto = onnx.load(str(ours))
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.metadata_props) == 0
    nodes = {n.name: n for n in proto.graph.node if n.name}
    w_dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "conv2.1.w")
    assert len(w_dq.input) == 2  # zero point 0 by default
    # Q/DQ nodes are unnamed; compute nodes keep their module paths
    assert all(not n.name for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    assert {"conv1/Conv", "conv2.0/Conv", "conv2.1/Conv", "conv2.2/Conv", "fc/Gemm", "input/Sub"} <= set(nodes)
    # every tensor but the graph's input/output and the layers' weights/biases has a 1-2 character name
    named = {t.name for t in proto.graph.initializer} | {x for n in proto.graph.node for x in [*n.input, *n.output]}
    assert all(len(x) <= 2 or x in ("input", "logits") or x.endswith((".w", ".b")) for x in named)
    assert not proto.producer_name and proto.graph.name == "g"
    assert [o.domain for o in proto.opset_import] == [""]  # none of the quantiser's unused domains
    # attributes at their operator default are not written (strides 1, group 1, no padding, ...)
    attrs = {n.name: {a.name for a in n.attribute} for n in proto.graph.node}
    assert attrs["conv2.0/Conv"] == set()  # a 1x1, stride 1, unpadded conv: kernel_shape is the weight's
    assert attrs["conv2.1/Conv"] == {"pads"}
    assert list(nodes["input/Sub"].input)[0] == "input"  # the normalisation stays float
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 4  # the 3-conv block stays three
    inits = {t.name: t for t in proto.graph.initializer}
    assert inits["conv2.2.b"].data_type == onnx.TensorProto.FLOAT
    assert inits["conv2.1.w"].data_type == onnx.TensorProto.INT8

    fused = [n for n in optimized_nodes(ours, tmp_path) if n.op_type == "QLinearConv"]
    assert {n.name.split("/")[0] for n in fused} >= {"conv2.0", "conv2.1", "conv2.2"}


def test_compact_changes_no_output_and_is_idempotent(tmp_path):
    """``compact`` (run on both artifacts) on onnxruntime's raw QDQ output and on a raw torch export:
    bit-identical outputs, checker clean, smaller, every Conv's kernel_shape gone (it is the weight's),
    and a second pass changes nothing."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeclean.export import compact

    torch.manual_seed(0)
    model = randomize_bn(ThreeConvNet())
    raw32 = tmp_path / "raw32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(input_model(model, SPEC).eval(), (torch.rand(2, 3, 8, 8),), str(raw32), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib}])

        def get_next(self):
            return next(self.items, None)

    raw8 = tmp_path / "raw8.onnx"
    quantize_static(str(raw32), str(raw8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    x = np.random.default_rng(4).random((8, 3, 8, 8), dtype=np.float32)
    for raw in (raw32, raw8):
        proto = onnx.load(str(raw))
        proto.ir_version = min(proto.ir_version, 13)
        done = compact(proto)
        onnx.checker.check_model(proto, full_check=True)
        assert done["kernel_shapes"] == 4 and done["renamed"] > 0
        assert not any(a.name == "kernel_shape" for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute)
        small = tmp_path / f"c_{raw.name}"
        onnx.save(proto, str(small))
        np.testing.assert_array_equal(ort_run(small, x), ort_run(raw, x))
        assert small.stat().st_size < raw.stat().st_size
        again = onnx.load(str(small))
        assert compact(again)["renamed"] == 0 and again.SerializeToString() == proto.SerializeToString()


def _three_conv_fp32(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ThreeConvNet())
    spec = ModelSpec(arch="three", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    fp32 = tmp_path / "f.onnx"
    export(model, spec, fp32, config=ExportConfig(write_ort=False))
    return fp32, np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)


def test_int8_per_tensor_small_layers_and_float_ends(tmp_path):
    """per_tensor_max_channels: layers with that few output channels get one weight scale; keep_fp32
    leaves the first conv and the classifier float; the 3-conv block still fuses to QLinearConv."""
    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    q = tmp_path / "q.onnx"
    quantize_int8(fp32, q, calib, Int8Config(per_tensor_max_channels=8, keep_fp32=("first_conv", "classifier")))
    proto = onnx.load(str(q))
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name: t for t in proto.graph.initializer}
    assert list(weight_scale(proto, "conv2.0").dims) == [] and list(weight_scale(proto, "conv2.1").dims) == []  # 4, 5 ch
    assert list(weight_scale(proto, "conv2.2").dims) == [16]  # 16 channels: per channel
    assert inits["conv2.1.w"].data_type == onnx.TensorProto.INT8
    for name in ("conv1.w", "fc.w"):  # left float, no DQ in front
        assert inits[name].data_type == onnx.TensorProto.FLOAT
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 4
    assert_int8_close(fp32, q)
    fused = [n.name.split("/")[0] for n in optimized_nodes(q, tmp_path) if n.op_type == "QLinearConv"]
    assert {"conv2.0", "conv2.1", "conv2.2"} <= set(fused) and "conv1" not in fused


def test_int8_reduce_range_gives_7_bit_weights(tmp_path):
    """reduce_range: weights on [-64, 63] (onnxruntime's answer to the saturating x86 kernels without VNNI);
    False: each channel's largest weight on +-127; None follows the host and says what it chose."""
    from edgeclean.bench import int8_kernels_saturate
    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    largest = {}
    for rr in (True, False, None):
        q = tmp_path / f"q{rr}.onnx"
        facts = quantize_int8(fp32, q, calib, Int8Config(reduce_range=rr))
        assert facts["reduce_range"] == (int8_kernels_saturate() if rr is None else rr)
        inits = onnx.load(str(q)).graph.initializer
        largest[rr] = max(int(np.abs(numpy_helper.to_array(t)).max()) for t in inits if t.data_type == onnx.TensorProto.INT8)
    assert largest[True] <= 64 and largest[False] == 127


def test_int8_unsigned_types_keep_their_zero_points(tmp_path):
    """U8U8 (activation_type / weight_type "uint8"): uint8 weights with their per-channel zero points
    (asymmetric, so not dropped), fused by onnxruntime, close to fp32; a type it does not know exits as a
    user error."""
    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    q = tmp_path / "q.onnx"
    quantize_int8(fp32, q, calib, Int8Config(activation_type="uint8", weight_type="uint8", reduce_range=False))
    proto = onnx.load(str(q))
    inits = {t.name: t for t in proto.graph.initializer}
    assert inits["conv2.1.w"].data_type == onnx.TensorProto.UINT8
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "conv2.1.w"]
    assert len(dq) == 1 and len(dq[0].input) == 3  # the zero point stays
    assert_int8_close(fp32, q)
    assert sum(n.op_type == "QLinearConv" for n in optimized_nodes(q, tmp_path)) >= 3
    with pytest.raises(UserError, match="uint8"):
        quantize_int8(fp32, tmp_path / "bad.onnx", calib, Int8Config(weight_type="int4"))


def test_int8_per_tensor_by_fan_in(tmp_path):
    """per_tensor_max_fan_in: one weight scale for the layers whose output channels have few weights
    (the 1x1 convs of the 3-conv block: 16 and 5 weights a channel), per channel elsewhere."""
    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    q = tmp_path / "q.onnx"
    quantize_int8(fp32, q, calib, Int8Config(per_tensor_max_fan_in=20))
    proto = onnx.load(str(q))
    onnx.checker.check_model(proto, full_check=True)
    assert list(weight_scale(proto, "conv2.0").dims) == []  # 1x1, 16 in: fan-in 16
    assert list(weight_scale(proto, "conv2.2").dims) == []  # 1x1, 5 in: fan-in 5
    assert list(weight_scale(proto, "conv2.1").dims) == [5]  # 3x3, 4 in: fan-in 36
    assert list(weight_scale(proto, "conv1").dims) == [16]  # 3x3, 3 in: fan-in 27
    assert_int8_close(fp32, q)


def test_int8_shared_zero_points_change_no_output(tmp_path):
    from onnx import numpy_helper

    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    shared, apart = tmp_path / "s.onnx", tmp_path / "a.onnx"
    quantize_int8(fp32, shared, calib, Int8Config(share_zero_points=True))
    quantize_int8(fp32, apart, calib, Int8Config(share_zero_points=False))
    x = np.random.default_rng(4).random((8, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(ort_run(shared, x), ort_run(apart, x))
    g = onnx.load(str(shared)).graph
    inits = {t.name: t for t in g.initializer}
    zps = {n.input[2] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
           and not inits[n.input[2]].dims}  # activations' (weights' are per channel)
    values = [int(numpy_helper.to_array(inits[z])) for z in zps]
    assert len(values) == len(set(values))  # one initializer per distinct value
    assert shared.stat().st_size < apart.stat().st_size


def test_int8_bad_calibration_method_is_user_error(tmp_path):
    from edgeclean.export import Int8Config, quantize_int8

    fp32, calib = _three_conv_fp32(tmp_path)
    with pytest.raises(UserError, match="calibrate_method"):
        quantize_int8(fp32, tmp_path / "q.onnx", calib, Int8Config(calibrate_method="kl"))


def test_int8_default_keeps_classifier_float(tmp_path):
    """The default int8 settings (chosen by benchmarks/int8_sweep.py): MinMax calibration, per-channel
    weights, the logits' Gemm left float, one initializer per distinct activation zero point; export
    reports them."""
    torch.manual_seed(0)
    model = randomize_bn(ThreeConvNet())
    spec = ModelSpec(arch="three", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    out = tmp_path / "q.onnx"
    info = export(model, spec, out, precision="int8", calib=calib,
                  config=ExportConfig(int8_min_agreement=0.0, write_ort=False))
    assert info["config"]["int8"]["keep_fp32"] == ("classifier", "smooth_stem")
    assert info["config"]["int8"]["calibrate_method"] == "minmax"
    g = onnx.load(str(out)).graph
    inits = {t.name: t for t in g.initializer}
    assert inits["fc.w"].data_type == onnx.TensorProto.FLOAT
    assert inits["conv1.w"].data_type == onnx.TensorProto.INT8  # a ReLU stem is quantised ("smooth_stem")
    assert inits["conv2.1.w"].data_type == onnx.TensorProto.INT8
    assert list(weight_scale(onnx.load(str(out)), "conv2.2").dims) == [16]  # per channel
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert gemm.name == "fc/Gemm" and gemm.input[1] == "fc.w"  # no DQ in front of the float classifier


class SiLUStemNet(ThreeConvNet):
    def forward(self, x):
        x = nn.functional.silu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_int8_keeps_a_silu_stem_float(tmp_path):
    """onnxruntime folds ReLU into the conv's quantised range but not SiLU (Sigmoid x Mul): the first
    conv and its SiLU stay float ("smooth_stem"); the next conv is quantised, outputs stay close."""
    from edgeclean.export import smooth_stem

    torch.manual_seed(0)
    model = randomize_bn(SiLUStemNet())
    spec = ModelSpec(arch="silu", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    fp32, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export(model, spec, fp32, config=ExportConfig(write_ort=False))
    nodes = onnx.load(str(fp32)).graph.node
    kept = [n.op_type for n in nodes if n.name in smooth_stem(nodes)]
    assert kept == ["Conv", "Sigmoid", "Mul"], kept
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    export(model, spec, q, precision="int8", calib=calib, config=ExportConfig(int8_min_agreement=0.0, write_ort=False))
    inits = {t.name: t for t in onnx.load(str(q)).graph.initializer}
    assert inits["conv1.w"].data_type == onnx.TensorProto.FLOAT
    assert inits["conv2.0.w"].data_type == onnx.TensorProto.INT8
    relu = tmp_path / "relu.onnx"
    export(randomize_bn(ThreeConvNet()), spec, relu, config=ExportConfig(write_ort=False))
    assert smooth_stem(onnx.load(str(relu)).graph.node) == []  # a ReLU stem is left to the quantiser
    x = calib[:4]
    assert np.abs(ort_run(q, x) - ort_run(fp32, x)).max() < 0.1 * np.abs(ort_run(fp32, x)).max()


def test_cross_layer_equalisation_keeps_fp32_and_equalises_ranges(tmp_path):
    """Equalising the factorised block (1x1 -> kxk -> 1x1, nothing between) and, with through_relu, the
    conv -> BN -> ReLU -> conv chain in front of it: the fp32 graph computes the same logits, and each
    pair's ranges (A's output channel j, B's input channel j) end equal."""
    from onnx import numpy_helper

    from edgeclean.export import (Int8Config, cross_layer_equalize, equalizable_pairs, in_channel_ranges,
                                  out_channel_ranges, quantize_int8, run_onnx)

    fp32, calib = _three_conv_fp32(tmp_path)
    proto = onnx.load(str(fp32))
    assert equalizable_pairs(proto) == [("conv2.0/Conv", "conv2.1/Conv"), ("conv2.1/Conv", "conv2.2/Conv")]
    assert ("conv1/Conv", "conv2.0/Conv") in equalizable_pairs(proto, through_relu=True)
    before = {t.name: numpy_helper.to_array(t).copy() for t in proto.graph.initializer}
    pairs = cross_layer_equalize(proto, through_relu=True, iterations=50)
    eq = tmp_path / "eq.onnx"
    onnx.save(proto, str(eq))
    x = np.random.default_rng(7).random((16, 3, 8, 8), dtype=np.float32)
    ref, got = run_onnx(fp32, x), run_onnx(eq, x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    assert any(not np.allclose(before[k], w[k]) for k in ("conv2.0.w", "conv2.1.w", "conv2.2.w"))
    for a, b in pairs:
        r1, r2 = out_channel_ranges(w[nodes[a].input[1]]), in_channel_ranges(w[nodes[b].input[1]])
        np.testing.assert_allclose(r1, r2, rtol=1e-3)
    # the int8 path with it on: same graph shape, fp32 file untouched, close to fp32
    q = tmp_path / "q.onnx"
    facts = quantize_int8(fp32, q, calib, Int8Config(equalize="relu"))
    assert facts["equalized_pairs"] == 3
    assert sum(n.op_type == "Conv" for n in onnx.load(str(q)).graph.node) == 4
    assert np.max(np.abs(run_onnx(q, x) - ref)) < 0.2 * np.max(np.abs(ref))
    with pytest.raises(UserError, match="equalize"):
        quantize_int8(fp32, q, calib, Int8Config(equalize="all"))


def test_int8_gate_fails_on_a_shown_shortfall_and_writes_nothing(tmp_path):
    from edgeclean.metrics import wilson_interval

    assert wilson_interval(31, 32)[1] > 0.99  # one near-tie flip in 32 images is no evidence of < 99%
    assert wilson_interval(250, 256)[1] < 0.99  # six in 256 are
    lo, hi = wilson_interval(254, 256)
    assert lo < 254 / 256 < hi and wilson_interval(256, 256)[1] == 1.0
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3, width=4.0))
    calib = np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32)
    out = tmp_path / "q.onnx"
    with pytest.raises(GateFailed, match="95% interval"):  # no interval reaches past 100%
        export(model, SPEC, out, precision="int8", calib=calib, config=ExportConfig(int8_min_agreement=1.001))
    assert list(tmp_path.iterdir()) == []


class ConvHeadNet(ThreeConvNet):
    """A fully convolutional classifier: a 1x1 conv writes per-pixel logits, forward() averages them."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return torch.mean(self.head(x), dim=(2, 3))


def test_int8_keeps_a_conv_classifier_float(tmp_path):
    """"classifier" is the layer that writes the logits, found back from the graph's output through the
    mean: a 1x1 conv head stays float like a Gemm one; the conv before it is quantised."""
    from edgeclean.export import classifier_node

    torch.manual_seed(0)
    model = randomize_bn(ConvHeadNet())
    spec = ModelSpec(arch="convhead", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    fp32, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export(model, spec, fp32, config=ExportConfig(write_ort=False))
    graph = onnx.load(str(fp32)).graph
    assert classifier_node(graph.node, graph.output[0].name) == ["head/Conv"]
    assert classifier_node(graph.node) == []  # no Gemm: nothing without the output to follow
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    export(model, spec, q, precision="int8", calib=calib, config=ExportConfig(int8_min_agreement=0.0, write_ort=False))
    inits = {t.name: t for t in onnx.load(str(q)).graph.initializer}
    assert inits["head.w"].data_type == onnx.TensorProto.FLOAT
    assert inits["conv2.2.w"].data_type == onnx.TensorProto.INT8


def test_int8_falls_back_to_int8_weights_with_float_activations(tmp_path):
    # calibrated on dim images, judged on full-range ones: static int8 clips the activations at the calibrated
    # ranges and fails the gate; int8 weights computed in float clip nothing
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3, width=4.0))
    rng = np.random.default_rng(5)
    calib = 0.05 * rng.random((32, 3, 16, 16), dtype=np.float32)
    x = rng.random((64, 3, 16, 16), dtype=np.float32)
    from edgeclean.export import with_int8_activations

    strict = with_int8_activations(ExportConfig(int8_min_agreement=0.9), "int8")  # --int8-activations int8
    with pytest.raises(GateFailed, match="interval"):
        export(model, SPEC, tmp_path / "static" / "q.onnx", precision="int8", calib=calib, eval_inputs=x, config=strict)
    assert not (tmp_path / "static").exists()  # not even the folder it made

    out = tmp_path / "q.onnx"
    info = export(model, SPEC, out, precision="int8", calib=calib, eval_inputs=x, config=ExportConfig(int8_min_agreement=0.9))
    assert info["int8_activations"] == "float"
    assert info["int8_static_agreement"]["given"] < 0.9 <= info["int8_agreement"]["given"]["top1_agreement"]
    proto = onnx.load(str(out))
    kinds = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" not in kinds and kinds.count("Conv") == 2
    inits = {t.name: t for t in proto.graph.initializer}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
        assert numpy_helper.to_array(inits[dq.input[0]]).dtype == np.int8
    assert info["int8_bytes"] < 0.4 * info["fp32_bytes"]
    fp32 = ort_run(out.with_suffix(".fp32.onnx"), x)
    assert np.max(np.abs(ort_run(out, x) - fp32)) < 0.05 * np.max(np.abs(fp32))  # int8 weight rounding only
    np.testing.assert_allclose(ort_run(out.with_suffix(".ort"), x), ort_run(out, x), atol=1e-5)
    # --int8-activations float: the same file without trying static int8 first
    asked = export(model, SPEC, tmp_path / "f.onnx", precision="int8", calib=calib, eval_inputs=x,
                   config=with_int8_activations(ExportConfig(int8_min_agreement=0.9), "float"))
    assert asked["int8_activations"] == "float" and asked["int8_static_agreement"] is None
    np.testing.assert_array_equal(ort_run(tmp_path / "f.onnx", x), ort_run(out, x))
    # with no images given, only the gate's held-out images are synthesised: nothing is calibrated
    bare = export(model, SPEC, tmp_path / "b.onnx", precision="int8", config=with_int8_activations(
        ExportConfig(int8_min_agreement=0.0, gate_samples=8, write_ort=False), "float"))
    assert bare["calibration"]["samples"] == 0 and bare["int8_agreement"]["synthetic_held_out"]["samples"] == 8
    np.testing.assert_array_equal(ort_run(tmp_path / "b.onnx", x), ort_run(out, x))  # same weights, same file


def test_int8_weights_only_keeps_the_float_ends_and_rejects_unknown_modes(tmp_path):
    from edgeclean.export import Int8Config, quantize_int8

    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3, width=4.0))
    export(model, SPEC, tmp_path / "m.onnx")
    facts = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", None, Int8Config(activations="float"))
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    convs = [n.name for n in g.node if n.op_type == "Conv"]
    assert facts["weights_only"] == convs and not facts["reduce_range"]  # no calibration, 8-bit, Gemm kept float
    inits = {t.name: t for t in g.initializer}
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert numpy_helper.to_array(inits[gemm.input[1]]).dtype == np.float32
    with pytest.raises(UserError, match="activations"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "bad.onnx", None, Int8Config(activations="int4"))


def test_int8_float_layers_name_what_int8_keeps_float_and_the_byte_model_prices_them(tmp_path):
    from edgeclean.export import int8_float_layers
    from edgeclean.ranks import estimate_bytes

    spec = ModelSpec(arch="x", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    torch.manual_seed(0)
    assert int8_float_layers(randomize_bn(ConvHeadNet()), spec) == ["head"]
    training = ThreeConvNet().train()
    assert int8_float_layers(training, spec) == ["fc"] and training.training  # the caller's mode is left alone
    assert int8_float_layers(randomize_bn(ThreeConvNet()), spec) == ["fc"]
    model = randomize_bn(SiLUStemNet())
    kept = int8_float_layers(model, spec)
    assert sorted(kept) == ["conv1", "fc"]
    calib = np.random.default_rng(3).random((16, 3, 8, 8), dtype=np.float32)
    real = export(model, spec, tmp_path / "q.onnx", precision="int8", calib=calib,
                  config=ExportConfig(int8_min_agreement=0.0, write_ort=False))["int8_bytes"]
    # the float stem's weights cost 4 bytes each in the file, as the estimate now says
    assert abs(estimate_bytes(model, "int8", kept) - real) < abs(estimate_bytes(model, "int8") - real)


class TokenMixNet(nn.Module):
    """A Linear on (N, pixels, C) tokens exports as MatMul + Add, not Gemm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)
        return self.fc(torch.relu(self.mix(t)).mean(1))


def test_int8_weights_only_covers_matmul_weights(tmp_path):
    from edgeclean.export import Int8Config, quantize_int8

    torch.manual_seed(0)
    spec = ModelSpec(arch="mix", input_shape=(3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    export(TokenMixNet().eval(), spec, tmp_path / "m.onnx", config=ExportConfig(write_ort=False))
    facts = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", None, Int8Config(activations="float"))
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    matmul = next(n for n in g.node if n.op_type == "MatMul")
    assert matmul.name in facts["weights_only"]
    dq = next(n for n in g.node if n.output[0] == matmul.input[1])
    inits = {t.name: t for t in g.initializer}
    w = numpy_helper.to_array(inits[dq.input[0]])
    assert dq.op_type == "DequantizeLinear" and w.dtype == np.int8
    assert numpy_helper.to_array(inits[dq.input[1]]).shape == (w.shape[-1],)  # one scale per output feature
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    ref = ort_run(tmp_path / "m.onnx", x)
    assert np.abs(ort_run(tmp_path / "q.onnx", x) - ref).max() < 0.02 * np.abs(ref).max()


POOL_NET = '''
import torch
from torch import nn
import torch.nn.functional as F


class PoolNet(nn.Module):
    """torchvision VGG's head on a small input (a 1x1 map pooled to 7x7), and a ceil-mode max pool before an
    adaptive pool to a size that does not divide its input: pools ONNX's AveragePool cannot write."""

    def __init__(self, num_classes=10, in_channels=1, max_pool=False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.pool7 = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(8 * 49 + 8 * 16, num_classes)
        self.max_pool = max_pool

    def forward(self, x):
        x = torch.relu(self.conv(x))
        a = self.pool7(F.adaptive_avg_pool2d(x, 1))
        b = F.max_pool2d(x, 2, ceil_mode=True)
        b = F.adaptive_max_pool2d(b, 4) if self.max_pool else F.adaptive_avg_pool2d(b, 4)
        return self.fc(torch.cat([a.flatten(1), b.flatten(1)], 1))


def MaxPoolNet(num_classes=10, in_channels=1):
    return PoolNet(num_classes, in_channels, max_pool=True)
'''


@pytest.mark.parametrize("n_in,n_out", [(1, 7), (7, 4), (14, 4), (5, 3), (8, 4), (3, 3)])
def test_adaptive_pool_matrix_is_torchs_adaptive_pool(n_in, n_out):
    from edgeclean.export import adaptive_pool_matrix

    x = torch.randn(2, 3, n_in, n_in + 2)
    ref = nn.functional.adaptive_avg_pool2d(x, (n_out, n_in + 2))
    torch.testing.assert_close(adaptive_pool_matrix(n_in, n_out) @ x, ref, atol=1e-6, rtol=1e-6)


def test_export_writes_adaptive_pools_onnx_cannot_and_fails_in_one_line(tmp_path):
    """A non-divisible adaptive average pool (the TorchScript exporter refuses it) exports, as two MatMuls, with
    parity; an op ONNX really cannot write (a non-divisible adaptive max pool) is one line and exit 2, not the
    exporter's IR dump on stderr."""
    (tmp_path / "poolnet.py").write_text(POOL_NET)
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("poolnet_test", tmp_path / "poolnet.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    torch.manual_seed(0)
    spec = ModelSpec(arch="poolnet.py:PoolNet", input_shape=(1, 13, 13))
    info = export(mod.PoolNet().eval(), spec, tmp_path / "pool.onnx")
    assert info["parity"]["ok"] and info["parity"]["max_abs_diff"] < 1e-5
    assert "MatMul" in ops(tmp_path / "pool.onnx")
    torch.save(mod.PoolNet(max_pool=True).state_dict(), tmp_path / "maxpool.pt")
    r = run_cli("export", "maxpool.pt", "--arch", "poolnet.py:MaxPoolNet", "--input-shape", "1x13x13", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == "", (r.stdout + r.stderr)[:500]
    assert "ONNX export failed" in r.stderr and not (tmp_path / "export").exists()


def test_a_static_int8_file_over_the_budget_is_replaced_by_the_smaller_weights_only_file(tmp_path):
    """The budget (``int8_max_bytes``): static int8 passes its gate here, but its activation Q/DQ pairs put it over;
    int8 weights with float activations have none, so that file is smaller and is written instead (``auto``)."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("tiny_cnn", num_classes=10, in_channels=3, width=2.0))
    rng = np.random.default_rng(6)
    calib = rng.random((32, 3, 16, 16), dtype=np.float32)
    cfg = ExportConfig(int8_min_agreement=0.0, write_ort=False)
    static = export(model, SPEC, tmp_path / "s.onnx", precision="int8", calib=calib, eval_inputs=calib, config=cfg)
    weights = export(model, SPEC, tmp_path / "w.onnx", precision="int8", calib=calib, eval_inputs=calib,
                     config=with_int8_activations(cfg, "float"))
    assert static["int8_activations"] == "int8" and weights["int8_bytes"] < static["int8_bytes"]
    budget = static["int8_bytes"] - 1
    fitted = export(model, SPEC, tmp_path / "b.onnx", precision="int8", calib=calib, eval_inputs=calib,
                    config=replace(cfg, int8_max_bytes=budget))
    assert fitted["int8_activations"] == "float" and fitted["int8_bytes"] == weights["int8_bytes"] <= budget
    assert fitted["int8_static_bytes"] == static["int8_bytes"] and fitted["int8_static_agreement"] is None
    # --int8-activations int8 (static or nothing) keeps the static file; the budget gate is run's to judge
    strict = export(model, SPEC, tmp_path / "x.onnx", precision="int8", calib=calib, eval_inputs=calib,
                    config=with_int8_activations(replace(cfg, int8_max_bytes=budget), "int8"))
    assert strict["int8_activations"] == "int8" and strict["int8_bytes"] == static["int8_bytes"]
    from edgeclean.pipeline import _weights_only_note  # what run's parity line says of each reason

    assert "over the budget" in _weights_only_note(fitted) and "agreed" not in _weights_only_note(fitted)
    assert _weights_only_note(static) == ""
