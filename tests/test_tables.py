"""Smoke test of the benchmark-table machinery (benchmarks/tables.py) on a tiny CNN.

Real computations only: a tiny_cnn "suspect" with a card, real export to ONNX, real onnxruntime
evaluation on the first test images of Fashion-MNIST, real CLP / rank scaling / torch-pruning.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from edgeclean.load import ModelSpec
from edgeclean.zoo import create_model

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def suspect(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=10, in_channels=1, width=8).eval()
    # BN statistics that differ per channel, so CLP's channel bound has a spread to work on
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    spec = ModelSpec(arch="tiny_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "width": 8}, num_classes=10,
                     input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    card = {"spec": spec.to_dict(), "dataset": "fashion-mnist", "attack": "badnets", "target": 3,
            "attack_params": {"size": 3, "margin": 0, "value": 1.0}}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_cells_cached_rendered_and_recomputed(suspect, tmp_path, one_thread):
    tables = _tables()
    out = tmp_path / "results"
    args = ["--suspects", str(suspect), "--limit", "200", "--results", str(out)]
    tables.main(["table1", "--methods", "none", "clp-u3", "rs-alone", *args])
    tables.main(["table2", "--methods", "original", "prune", "--ratios", "4", *args])

    none = json.loads((out / "table1" / "tiny__none.json").read_text())
    rs = json.loads((out / "table1" / "tiny__rs-alone.json").read_text())
    for cell in (none, rs):
        for key in ("seed", "commit", "date", "machine", "ca", "asr", "racc", "bytes", "macs", "time_s", "test_limit"):
            assert key in cell, key
        assert cell["n_clean"] == 200 and cell["test_limit"] == 200
    # DER of the suspect against itself is exactly "no change"; rank scaling met its 1/8 budget
    assert none["ref"]["ca"] == none["ca"] and none["ref"]["asr"] == none["asr"]
    assert rs["budget_bytes"] == none["bytes"] // 8 and 0.0 <= rs["der"] <= 1.0
    assert rs["macs"] < none["macs"]
    prune = json.loads((out / "table2" / "tiny__prune__r4.json").read_text())
    assert prune["fits"] and prune["bytes"] <= prune["original_bytes"] // 4
    assert prune["p50_ms_1t"] > 0 and prune["p50_ms_2t"] > 0

    # cached cells are skipped; --force recomputes the chosen ones only
    stamp = (out / "table1" / "tiny__none.json").stat().st_mtime_ns
    rs_stamp = (out / "table1" / "tiny__rs-alone.json").stat().st_mtime_ns
    tables.main(["table1", "--methods", "none", "rs-alone", *args])
    assert (out / "table1" / "tiny__none.json").stat().st_mtime_ns == stamp
    tables.main(["table1", "--methods", "none", "--force", *args])
    assert (out / "table1" / "tiny__none.json").stat().st_mtime_ns != stamp
    assert (out / "table1" / "tiny__rs-alone.json").stat().st_mtime_ns == rs_stamp

    tables.main(["render", "--results", str(out)])
    md = (out / "RESULTS.md").read_text()
    row = next(line for line in md.splitlines() if "| rank scaling alone" in line and line.startswith("| tiny"))
    assert row.startswith("| tiny†")  # † marks the partial test set
    assert f"| {100 * rs['ca']:.1f} |" in row
    assert "pending" in md  # the methods not computed


def test_unknown_method_is_refused(tmp_path):
    tables = _tables()
    with pytest.raises(SystemExit, match="unknown method"):
        tables.main(["table1", "--methods", "nope", "--results", str(tmp_path)])
