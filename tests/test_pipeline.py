"""`edgeclean run`: every bad input exits 2 with one line and leaves no output directory behind."""

import json

import pytest
import torch

from edgeclean import create_model
from edgeclean import zoo
from edgeclean.errors import UserError
from edgeclean.pipeline import RunConfig, run

from conftest import assert_one_line_error

MLP = '''
from torch import nn

def make(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes))
'''


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(create_model("tiny_cnn", num_classes=4, in_channels=1).state_dict(), path)
    return path


def _assert_no_output(out):
    assert not out.exists(), list(out.parent.iterdir()) if out.parent.exists() else out
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_inputs_exit_2_and_leave_nothing(tmp_path, tiny, cli):
    out = tmp_path / "out" / "run"
    cases = []
    cases.append((["run", tmp_path / "missing.pt"], "no such file"))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    cases.append((["run", tmp_path / "notes.pt"], "not a pytorch checkpoint"))
    data = tiny.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    cases.append((["run", tmp_path / "trunc.pt"], "truncated"))
    torch.save(create_model("tiny_cnn"), tmp_path / "module.pt")
    cases.append((["run", tmp_path / "module.pt"], "refuses"))
    cases.append((["run", tiny, "--arch", "resnet99"], "--arch"))
    cases.append((["run", tiny, "--input-shape", "3x32x32"], "input shape"))
    (tmp_path / "mlp.py").write_text(MLP)
    from torch import nn

    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 10)).state_dict(), tmp_path / "mlp.pt")
    cases.append((["run", tmp_path / "mlp.pt", "--arch", f"{tmp_path / 'mlp.py'}:make"], "no conv2d layers"))
    cases.append((["run", tiny, "--budget", "four megabytes"], "--budget"))
    cases.append((["run", tiny, "--backdoor-target", "4"], "--backdoor-target"))  # 4 classes: 0..3
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for args, needle in cases:
        result = cli(*args, "--out", out)
        assert_one_line_error(result, needle)
        _assert_no_output(out)
    result = cli("run", tiny, "--out", blocker / "sub")
    assert_one_line_error(result, "--out")
    assert blocker.read_text() == "x"


def test_malicious_pickle_run(tmp_path, cli):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"conv.weight": Evil()}, tmp_path / "evil.pt")
    out = tmp_path / "out"
    assert_one_line_error(cli("run", tmp_path / "evil.pt", "--out", out), "refuses")
    assert not marker.exists()
    _assert_no_output(out)


def test_ambiguous_architecture_lists_candidates(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(zoo.REGISTRY, "tiny_twin", zoo.ZooEntry("tiny_twin", zoo.tiny_cnn, zoo._infer_tiny, "twin"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="ambiguous.*tiny_cnn.*tiny_twin"):
        run(tiny, RunConfig(out_dir=out))
    _assert_no_output(out)


def test_impossible_budget_names_smallest_size(tmp_path, tiny, cli):
    out = tmp_path / "out"
    result = cli("run", tiny, "--budget", "40B", "--input-shape", "1x16x16", "--out", out)
    assert_one_line_error(result, "smallest")
    _assert_no_output(out)


def _fast_extra(seed=0):
    """Stage configs small enough for a tiny model in a test (the defaults are for real models)."""
    from edgeclean.cc import CCConfig
    from edgeclean.finetune import FinetuneConfig
    from edgeclean.ngf import NGFConfig
    from edgeclean.probe import MaskProbeConfig, ProbeConfig
    from edgeclean.scan import ScanConfig
    from edgeclean.synth import SynthConfig

    return {
        "scan": ScanConfig(n=16, seed=seed, synth=SynthConfig(iterations=4), probe=ProbeConfig(steps=2), trigger=None,
                           mask=MaskProbeConfig(images=8, steps=10)),
        "cc": CCConfig(n_synthetic=16, seed=seed, finetune=FinetuneConfig(steps=4, batch_size=8)),
        "ngf": NGFConfig(iterations=6, batch_size=8, cov_every=2, eigen_every=3),
    }


@pytest.fixture
def tiny_wide(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wide.pt"
    torch.save(create_model("tiny_cnn", num_classes=4, in_channels=1, width=4.0).state_dict(), path)
    return path


@pytest.mark.parametrize("method", ["cc", "cc+ngf", "clp"])
def test_run_writes_artifact_reports_and_rebuildable_model(tmp_path, tiny_wide, method):
    import numpy as np
    import onnxruntime as ort

    from edgeclean import load_suspect

    out = tmp_path / f"out-{method.replace('+', '-')}"
    cfg = RunConfig(method=method, budget="40KB", precision="fp32", out_dir=out, bench_runs=3, bench_warmup=1,
                    extra=_fast_extra())
    report, out_dir = run(tiny_wide, cfg, {"input_shape": "1x16x16"})
    assert out_dir == out
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "cleaned.safetensors", "cleaned.json", "report.json", "report.html"} <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("artifact", "size_bytes", "budget_bytes", "precision", "method", "scan_before", "scan_after",
                "parity", "latency_ms", "target", "stages", "layers"):
        assert key in on_disk, key
    assert on_disk["size_bytes"] == (out / "model.onnx").stat().st_size <= 40_000
    assert on_disk["gates"]["budget"]["passed"] and on_disk["gates"]["parity"]["passed"]
    assert on_disk["parity"]["max_abs_diff"] <= 1e-4
    for scan_key in ("scan_before", "scan_after"):
        assert {"suspected", "target_class", "score"} <= set(on_disk[scan_key])
        said = on_disk[scan_key]  # the smallest-mask probe ran, before and after: a size per class
        assert len(said["mask_sizes"]) == len(said["histogram"]) and said["mask_skipped"] is None
    assert {"p50", "p90", "p99", "mean", "emulated"} <= set(on_disk["latency_ms"])
    assert "<svg" in (out / "report.html").read_text()
    # The cleaned PyTorch model rebuilds from cleaned.safetensors + its spec and matches the artifact.
    model, spec = load_suspect(out / "cleaned.safetensors")
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    if method != "clp":
        assert any(l["ranks"] for l in on_disk["layers"])  # something was factorised
        assert on_disk["cc"]["distillation"]["steps"] > 0 and "<h2>Distillation</h2>" in (out / "report.html").read_text()


def test_same_seed_same_artifact_bytes(tmp_path, tiny_wide):
    reports = []
    for i in range(2):
        cfg = RunConfig(method="cc", budget="40KB", precision="fp32", out_dir=tmp_path / f"r{i}", bench_runs=2,
                        bench_warmup=1, extra=_fast_extra())
        reports.append(run(tiny_wide, cfg, {"input_shape": "1x16x16"})[0])
    a, b = ((tmp_path / f"r{i}" / "model.onnx").read_bytes() for i in range(2))
    assert a == b

    def numbers(obj):
        """Everything but wall-clock measurements."""
        if isinstance(obj, dict):
            return {k: numbers(v) for k, v in obj.items()
                    if k not in ("stages", "latency_ms", "timings", "time", "time_s", "out_dir")
                    and not k.endswith("_s") and not k.endswith("seconds")}
        if isinstance(obj, list):
            return [numbers(v) for v in obj]
        return obj

    assert json.dumps(numbers(reports[0]), sort_keys=True) == json.dumps(numbers(reports[1]), sort_keys=True)


def test_run_cli_exit_code_reflects_gates(tmp_path, tiny_wide, cli):
    """The CLI runs the real pipeline; a tiny random model is not suspected, so exit 0 and a passing last line."""
    out = tmp_path / "cli"
    result = cli("run", tiny_wide, "--input-shape", "1x16x16", "--budget", "40KB", "--precision", "fp32",
                 "--method", "none", "--out", out, "--quiet")
    report = json.loads((out / "report.json").read_text())
    failed = [k for k, v in report["gates"].items() if not v["passed"]]
    assert result.returncode == (1 if failed else 0), result.stderr
    if failed:
        assert failed[0] in result.stderr.splitlines()[-1]
    else:  # the gates that ran, no others (no budget gate without --budget)
        assert result.stdout.splitlines()[-1] == "passed: parity ok, within budget, no backdoor suspected after cleaning"


def test_backdoor_target_makes_cleaning_act_whatever_the_scan_says(tmp_path, tiny_wide):
    """A random net is not suspected, so C&C leaves it unpatched; with --backdoor-target the patch
    reverse-engineers triggers for that class. The scan's own verdict is reported unchanged."""
    from dataclasses import replace

    from edgeclean.ranks import RankConfig

    extra = _fast_extra()  # the tiny net's 1/8 is near its smallest ranks: allow the cap there (suspected_min_room)
    extra["cc"] = replace(extra["cc"], ranks=RankConfig(suspected_min_room=1.0))
    reports = {}
    for target in (None, 1):
        cfg = RunConfig(method="cc", budget="40KB", precision="fp32", out_dir=tmp_path / f"bt{target}", bench_runs=2,
                        bench_warmup=1, extra=extra, backdoor_target=target)
        reports[target] = run(tiny_wide, cfg, {"input_shape": "1x16x16"})[0]
    assert not reports[None]["scan_before"]["suspected"] and reports[None]["cc"]["patch"] is None
    assert reports[1]["backdoor_target"] == 1
    for key in ("suspected", "target_class", "score", "basis"):
        assert reports[1]["scan_before"][key] == reports[None]["scan_before"][key], key
    patch = reports[1]["cc"]["patch"]
    assert patch is not None and {t["kind"] for t in patch["triggers"]} >= {"mask", "additive"}
    # cleaning against a class caps what the 40 KB buys (RankConfig.suspected_fraction); nothing suspected: no cap
    assert reports[None]["cc"]["rank_cap_bytes"] is None
    assert reports[1]["cc"]["rank_cap_bytes"] < 40_000 and reports[1]["size_bytes"] < reports[None]["size_bytes"]
    from edgeclean.report import render_html

    assert "Cleaned against class 1 as asked" in render_html({**reports[1], "gates": {}})  # the report says why
    assert "--backdoor-target CLASS" in render_html({**reports[None], "gates": {}})  # and how, when nothing was


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_crash_mid_run_leaves_nothing(tmp_path, tiny_wide, monkeypatch, exc):
    """Ctrl-C (or a crash) during export, after scan and cleaning have run: no directory, no staging."""
    import edgeclean.export

    def boom(*args, **kwargs):
        raise exc("stopped mid-run")

    monkeypatch.setattr(edgeclean.export, "export", boom)
    out = tmp_path / "deep" / "out"
    cfg = RunConfig(method="cc", budget="40KB", precision="fp32", out_dir=out, extra=_fast_extra())
    with pytest.raises(exc):
        run(tiny_wide, cfg, {"input_shape": "1x16x16"})
    assert not out.exists() and not (tmp_path / "deep").exists()


def test_inconclusive_scan_after_cleaning_fails_the_backdoor_gate(tmp_path):
    """A network whose predictions collapse onto one class (here: a head bias that swamps every
    logit) gives the scan nothing to judge; the gate must not pass it as clean."""
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=4, in_channels=1, width=4.0)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[2] = 1e3
    path = tmp_path / "collapsed.pt"
    torch.save(model.state_dict(), path)
    cfg = RunConfig(method="none", budget="40KB", precision="fp32", out_dir=tmp_path / "out", extra=_fast_extra())
    run(path, cfg, {"input_shape": "1x16x16"})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["scan_after"]["inconclusive"] and not report["gates"]["backdoor"]["passed"]
    assert "inconclusive" in report["gates"]["backdoor"]["detail"]
    from edgeclean.cli import _said  # run's summary line: neither "clean" nor "not suspected" (it said "clean")

    assert report["scan_before"]["inconclusive"]
    assert [_said(report[k], "SUSPECTED", "clean") for k in ("scan_before", "scan_after")] == ["inconclusive"] * 2


def test_backdoor_gate_says_when_only_the_scan_after_flags_an_untouched_model():
    """A flag the scan after cleaning raises fails the gate either way; where the cleaning had no target (nothing
    was patched), the detail says that the flag is the compressed model's."""
    from dataclasses import replace

    from edgeclean.load import ModelSpec
    from edgeclean.pipeline import backdoor_gate
    from edgeclean.scan import scan

    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=4, in_channels=1, width=4.0).eval()
    spec = ModelSpec(arch="tiny_cnn", num_classes=4, input_shape=(1, 16, 16))
    result = scan(model, spec, _fast_extra()["scan"])
    flagged = replace(result, suspected=True, target_class=1)
    untouched, acted = backdoor_gate(flagged, acted_on=False), backdoor_gate(flagged, acted_on=True)
    assert not untouched["passed"] and not acted["passed"]
    assert "suspected nothing and nothing was patched" in untouched["detail"]
    assert "nothing was patched" not in acted["detail"] and "suspected (target 1)" in acted["detail"]
    cleared = backdoor_gate(replace(result, suspected=False, inconclusive=False), acted_on=False)
    assert cleared["passed"] and cleared["detail"].endswith("not suspected")
    # a net without BatchNorm: the flag cannot come from BN statistics; the detail names the thin no-BN margin
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    from edgeclean.scan import UniversalConfig

    no_bn = scan(plain, spec, replace(_fast_extra()["scan"], universal_no_bn=(UniversalConfig(steps=2, images=8),)))
    detail = backdoor_gate(replace(no_bn, suspected=True, target_class=1), acted_on=False)["detail"]
    assert "no BatchNorm" in detail and "BatchNorm statistics" not in detail


def test_bad_int8_activations_mode_is_refused_before_any_stage(tmp_path, tiny):
    from edgeclean.pipeline import RunConfig, run

    out = tmp_path / "out"
    with pytest.raises(UserError, match="--int8-activations"):
        run(tiny, RunConfig(int8_activations="int4", out_dir=out))
    _assert_no_output(out)
