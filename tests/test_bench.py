"""The device side: bench without torch, its JSON, and the emulated arm64 run where its root exists.

The models here are built with onnx.helper, not exported from torch, because this side must work
in an image that has no torch.
"""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeclean import arm64
from edgeclean.bench import bench_host, make_inputs


def small_cnn(path, seed=0):
    """Conv(3->8, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(8->5), dynamic batch."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.weight")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv.bias")
    fw = numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fc.weight")
    fb = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc.bias")
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["c"], name="conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], [w, b, fw, fb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeclean.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_bench_import_path_has_no_torch():
    code = ("import sys, edgeclean, edgeclean.bench, edgeclean.cli, edgeclean.arm64; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_int8_kernels_saturate_on_x86_without_vnni():
    from edgeclean.bench import int8_kernels_saturate

    assert int8_kernels_saturate({"machine": "x86_64", "flags": ["avx2", "fma"]})
    assert int8_kernels_saturate({"machine": "x86_64", "flags": ["avx512f", "avx512bw"]})
    assert not int8_kernels_saturate({"machine": "x86_64", "flags": ["avx2", "avx512_vnni"]})
    assert not int8_kernels_saturate({"machine": "x86_64", "flags": ["avx2", "avx_vnni"]})
    assert not int8_kernels_saturate({"machine": "aarch64", "flags": ["asimd", "asimddp"]})


def test_bench_cli_json(tmp_path):
    model = small_cnn(tmp_path / "m.onnx")
    r = run_cli("bench", model, "--runs", "7", "--warmup", "2", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["file_bytes"] == model.stat().st_size
    assert info["target"] == "host" and info["emulated"] is False
    assert info["threads"] == 1 and info["runs"] == 7 and info["warmup"] == 2
    assert info["inputs"] == {"input": {"shape": [1, 3, 12, 12], "dtype": "float32"}}  # dynamic batch -> 1
    lat = info["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["std"] >= 0 and lat["min"] <= lat["mean"] <= lat["max"]
    assert info["session_create_ms"] > 0 and info["first_inference_ms"] > 0
    import onnxruntime

    assert info["onnxruntime"] == onnxruntime.__version__
    assert info["cpu"]["model"] and info["cpu"]["logical_cpus"] >= 1 and isinstance(info["cpu"]["flags"], list)
    assert info["peak_rss_mb"] > 10
    assert set(info["ops_ran"]["op_counts"]) & {"Conv", "FusedConv"}
    assert info["ops_ran"]["providers"] == ["CPUExecutionProvider"]


def test_bench_cli_human_and_errors(tmp_path):
    model = small_cnn(tmp_path / "m.onnx")
    r = run_cli("bench", model, "--runs", "3", "--warmup", "0")
    assert r.returncode == 0 and "p50" in r.stdout and "peak RSS" in r.stdout
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    for args, needle in (((tmp_path / "missing.onnx",), "no such model"), ((tmp_path / "bad.onnx",), "cannot load"),
                         ((model, "--runs", "0"), "runs"), ((model, "--session-config", "novalue"), "KEY=VALUE")):
        r = run_cli("bench", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr


def test_inputs_are_seeded_in_unit_range(tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(small_cnn(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    a, b = make_inputs(sess, seed=3)["input"], make_inputs(sess, seed=3)["input"]
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 1 and a.shape == (1, 3, 12, 12)


def test_outputs_written_for_comparison(tmp_path):
    model = small_cnn(tmp_path / "m.onnx")
    bench_host(model, runs=2, warmup=0, outputs_path=tmp_path / "out.npz", profile=False)
    with np.load(tmp_path / "out.npz") as out:
        assert out["logits"].shape == (1, 5)


@pytest.mark.skipif(not (arm64.is_arm64_host() or arm64.is_ready()),
                    reason="arm64 emulation root not built; build it once with: edgeclean bench --target arm64 --setup")
def test_arm64_run_matches_host(tmp_path):
    model = small_cnn(tmp_path / "m.onnx")
    info = arm64.bench_arm64(model, runs=2, warmup=0)
    assert info["target"] == "arm64"
    assert info["cpu"]["machine"] == "aarch64"
    if not arm64.is_arm64_host():
        assert info["emulated"] is True and "qemu" in info["emulator"]
        cmp = info["host_compare"]
        assert cmp["ok"] and cmp["max_abs_diff"] <= 1e-4 and cmp["top1_equal"]
    assert set(info["ops_ran"]["op_counts"]) & {"Conv", "FusedConv"}


def test_dockerfile_is_hadolint_clean():
    import shutil
    from pathlib import Path

    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([exe, str(root / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_session_config_reaches_onnxruntime(tmp_path):
    """A weights-only int8 conv (an int8 initializer behind a DequantizeLinear): onnxruntime dequantises it at every
    run by default, and folds it into a float weight at load with session.disable_quant_qdq=1."""
    path = small_cnn(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    g = model.graph
    w = next(t for t in g.initializer if t.name == "conv.weight")
    arr = numpy_helper.to_array(w)
    scale = np.abs(arr).max(axis=(1, 2, 3)) / 127
    q = np.round(arr / scale[:, None, None, None]).astype(np.int8)
    g.initializer.remove(w)
    g.initializer.extend([numpy_helper.from_array(q, "conv.wq"), numpy_helper.from_array(scale.astype(np.float32), "conv.ws")])
    g.node.insert(0, helper.make_node("DequantizeLinear", ["conv.wq", "conv.ws"], ["conv.weight"], axis=0))
    onnx.save(model, str(tmp_path / "wo.onnx"))
    plain = json.loads(run_cli("bench", tmp_path / "wo.onnx", "--runs", "3", "--warmup", "0", "--json").stdout)
    r = run_cli("bench", tmp_path / "wo.onnx", "--runs", "3", "--warmup", "0", "--json",
                "--session-config", "session.disable_quant_qdq=1")
    assert r.returncode == 0, r.stderr
    folded = json.loads(r.stdout)
    assert plain["session_config"] == {} and folded["session_config"] == {"session.disable_quant_qdq": "1"}
    assert "DequantizeLinear" in plain["ops_ran"]["op_counts"]
    assert "DequantizeLinear" not in folded["ops_ran"]["op_counts"]
