"""The published tables (benchmarks/RESULTS.md), one command each; every cell cached as JSON.

    python benchmarks/tables.py table1 [--suspects S ...] [--methods M ...] [--force] [--limit N]
    python benchmarks/tables.py table2 [--suspects S ...] [--methods M ...] [--ratios 4 8 16] [--force] [--limit N]
    python benchmarks/tables.py table3 [--suspects demo resnet18-full] [--force]
    python benchmarks/tables.py render          # benchmarks/RESULTS.md from the cached cells only

Table 1 (defenses): every suite suspect + the demo x {none, CLP u=3, CLP best u (oracle), synthetic
fine-tuning alone, rank scaling alone, C&C, NGF 1% clean, NGF data-free, C&C + NGF}; the C&C-based
methods at a budget of 1/8 of the suspect's fp32 ONNX size. Table 2 (compression at equal bytes):
resnet18_badnets, vgg11_badnets, demo at 1/4, 1/8, 1/16 of the fp32 ONNX size. Table 3 (time to
clean): ``pipeline.run`` stage timings for the demo and a full-width ResNet-18.

A cell is computed once and written to ``benchmarks/results/table{1,2,3}/<suspect>__<method>[__r<ratio>].json``
with the seed, git commit, date, machine and load; ``--methods`` / ``--force`` recompute chosen
cells, existing cells are skipped otherwise. What ships is measured: every cleaned model is
exported to ONNX (``edgeclean.export``) and CA / ASR / R-Acc are computed by onnxruntime on the
Fashion-MNIST test split (``edgeclean.metrics``); DER is against the suspect's own fp32 ONNX.
Methods dispatch through ``edgeclean.pipeline._clean`` (the same code ``edgeclean run`` uses),
with the scan's synthetic images cached per suspect under ``.cache/tables/`` (not committed).

Run single-threaded (the machine is shared): the script sets torch and onnxruntime to 1 thread,
except the 2-thread latency column of Table 2.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / ".cache" / "tables"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"

SEED = 0
SUITE = [f"{a}_{k}" for a in ("resnet18", "vgg11") for k in ("badnets", "blended", "sig", "wanet", "ftrojan", "clean")]
ALL_SUSPECTS = SUITE + ["demo"]

# Table 1 methods: key -> (label, uses the scan's synthetic images, depends on C&C fine-tuning)
T1 = {
    "none": ("none (suspect as given)", False, False),
    "clp-u3": ("CLP u=3", False, False),
    "clp-best": ("CLP best u (oracle: by test DER)", False, False),
    "ft-alone": ("synthetic fine-tuning alone (C&C, no rank scaling)", True, True),
    "rs-alone": ("rank scaling alone (C&C, no fine-tuning)", False, False),
    "rs-dense": ("rank scaling alone, uncompressed (every conv dense)", False, False),
    "cc": ("C&C", True, True),
    "ngf-1pct": ("NGF, 1% clean data", False, False),
    "ngf-datafree": ("NGF, data-free (scan images)", True, False),
    "cc+ngf": ("C&C + NGF (1% clean data)", True, True),
}
CLP_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
CLEAN_DATA = "fashion-mnist:1%"

# Table 2 methods: key -> (label, depends on C&C fine-tuning)
T2 = {
    "original": ("fp32 original", False),
    "cc-fp32": ("C&C ranks, fp32", True),
    "cc-int8": ("C&C ranks + int8", True),
    "int8": ("int8 only (original weights)", False),
    "prune": ("torch-pruning L1 global, no fine-tuning", False),
    "prune+ft": ("torch-pruning L1 global + C&C's synthetic fine-tuning", True),
}
T2_SUSPECTS = ["resnet18_badnets", "vgg11_badnets", "demo"]
RATIOS = (4, 8, 16)
T3_MODELS = ["demo", "resnet18-full"]


# --------------------------------------------------------------------------- provenance


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    # porcelain lines are "XY path": keep the leading status column (no strip before slicing)
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "edgeclean", "benchmarks/tables.py").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "dirty": bool(dirty), "dirty_files": dirty}


def code_hash(*names: str) -> str:
    import hashlib

    h = hashlib.sha1()
    for n in names:
        h.update((ROOT / "edgeclean" / n).read_bytes())
    return h.hexdigest()[:10]


def machine() -> dict:
    import onnxruntime as ort

    from edgeclean.bench import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "logical_cpus": cpu["logical_cpus"], "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads()}


def write_cell(path: Path, cell: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1, default=str))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- one suspect


def suspect_path(name: str) -> Path:
    """``demo``, a suite name (``resnet18_badnets``) or any checkpoint path with a JSON card."""
    if name.endswith((".pt", ".pth", ".safetensors")):
        return Path(name).resolve()
    return ROOT / ("models/demo_badnets_resnet18.pt" if name == "demo" else f"benchmarks/suspects/{name}.pt")


def suspect_name(name: str) -> str:
    return Path(name).stem if name.endswith((".pt", ".pth", ".safetensors")) else name


class Suspect:
    """A suspect with its card, test sets, original fp32 ONNX and (cached) scan, made on demand."""

    def __init__(self, name: str, limit: int | None = None, seed: int = SEED):
        from edgeclean.attacks import attack_params, poisoned_test_set
        from edgeclean.data import load_dataset
        from edgeclean.load import load_suspect, read_card

        self.seed, self.limit = seed, limit
        self.path, self.name = suspect_path(name), suspect_name(name)
        if not self.path.exists():
            raise SystemExit(f"{self.path} is missing; make the suite with benchmarks/suite.py make")
        self.card = read_card(self.path)
        self.model, self.spec = load_suspect(self.path)
        self.model.eval()
        attack = self.card.get("attack")
        self.attack = None if attack in (None, "", "none", "clean") else attack
        self.target = self.card.get("target") if self.attack else None
        test = load_dataset(self.card.get("dataset", "fashion-mnist"), split="test")
        self.test = test.subset(range(min(limit, len(test)))) if limit else test
        self.poisoned = None
        if self.attack:
            params = attack_params(self.attack, self.spec.input_shape, **self.card.get("attack_params", {}))
            self.poisoned = poisoned_test_set(self.test, self.attack, self.target, params)
        self.dir = CACHE / self.name
        self._scan = self._ref = None
        self._onnx = None

    @property
    def backdoored(self) -> bool:
        return self.attack is not None

    def original_onnx(self) -> tuple[Path, int]:
        from edgeclean.export import ExportConfig, export

        if self._onnx is None:
            path = self.dir / "original.onnx"
            export(self.model, self.spec, path, "fp32", config=ExportConfig(seed=self.seed, write_ort=False))
            self._onnx = (path, path.stat().st_size)
        return self._onnx

    def evaluate_onnx(self, path: Path) -> dict:
        from edgeclean.metrics import OnnxClassifier, evaluate_predictor, predictor

        clf = OnnxClassifier(path, threads=1)
        return evaluate_predictor(predictor(clf), self.test, self.poisoned, self.target)

    def reference(self) -> dict:
        if self._ref is None:
            self._ref = self.evaluate_onnx(self.original_onnx()[0])
        return self._ref

    def scan(self):
        """The scan of the suspect (``edgeclean.scan``, seeded, 1 thread), cached on disk: its
        synthetic / adversarial images feed C&C fine-tuning and data-free NGF."""
        from edgeclean.scan import ScanConfig, ScanResult, scan

        if self._scan is None:
            # keyed by the scan code itself: a changed scan/synth/probe never reuses old images
            key = self.dir / f"scan_seed{self.seed}_{code_hash('scan.py', 'synth.py', 'probe.py')}.pt"
            if key.exists():  # our own cache file, written below: a full pickle is fine here
                d = torch.load(key, weights_only=False)
            else:
                t0 = time.perf_counter()
                r = scan(self.model, self.spec, ScanConfig(seed=self.seed, threads=1))
                d = {"result": r, "seconds": time.perf_counter() - t0}
                key.parent.mkdir(parents=True, exist_ok=True)
                torch.save(d, key)
            assert isinstance(d["result"], ScanResult)
            self._scan = (d["result"], d["seconds"])
        return self._scan


# --------------------------------------------------------------------------- measuring a cleaned model


def measure(s: Suspect, model, out: Path, precision: str = "fp32", calib=None, eval_inputs=None) -> dict:
    """Export ``model`` (what ships), evaluate the ONNX file, count MACs; DER against the suspect's ONNX."""
    from edgeclean.errors import GateFailed
    from edgeclean.export import ExportConfig, export, quantize_int8
    from edgeclean.metrics import der
    from edgeclean.summary import count_macs

    t0 = time.perf_counter()
    cfg = ExportConfig(seed=s.seed, write_ort=False)
    gate = None
    try:
        info = export(model, s.spec, out, precision, calib=calib, eval_inputs=eval_inputs, config=cfg)
    except GateFailed as exc:  # int8 agreement gate: still measure what the quantiser gave, and say so
        gate = str(exc)
        fp32 = out.with_suffix(".fp32.onnx")
        info = export(model, s.spec, fp32, "fp32", config=cfg)
        quantize_int8(fp32, out, calib.numpy() if hasattr(calib, "numpy") else calib)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = s.evaluate_onnx(out)
    eval_s = time.perf_counter() - t0
    ref = s.reference()
    row = {"ca": res["ca"], "n_clean": res["n_clean"], "bytes": out.stat().st_size,
           "macs": count_macs(model, tuple(s.spec.input_shape)), "export_s": round(export_s, 2), "eval_s": round(eval_s, 2),
           "ref": {k: ref[k] for k in ("ca", "asr", "racc") if k in ref}}
    if s.backdoored:
        row.update({"asr": res["asr"], "racc": res["racc"], "n_poisoned": res["n_poisoned"],
                    "der": der(res["ca"], res["asr"], ref["ca"], ref["asr"])})
    if precision == "int8":
        row["int8_agreement"] = info.get("int8_agreement")
        row["int8_gate_failed"] = gate
    return row


def cell_header(table: str, s: Suspect, method: str, **extra) -> dict:
    return {"table": table, "suspect": s.name, "method": method, **extra, "seed": s.seed,
            "test_limit": s.limit, "attack": s.attack, "target": s.target, **git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "loadavg_start": list(os.getloadavg())}


def _brief(info: dict) -> dict:
    """The parts of a method report worth keeping in a cell (no per-layer dumps)."""
    keep = {}
    if "clp" in info:
        keep["clp"] = {k: info["clp"][k] for k in ("u", "pruned_channels", "channels")}
    if "ngf" in info:
        keep["ngf"] = {k: info["ngf"].get(k) for k in ("layer", "samples", "data", "relative_change", "seconds")}
    if "cc" in info:
        keep["cc"] = {k: info["cc"].get(k) for k in ("rank_policy", "budget_bytes", "estimated_bytes_after", "timings",
                                                      "factorized_layers", "scaled_components")}
        keep["cc"]["finetune_steps"] = (info.get("finetune") or {}).get("steps")
        patch = info["cc"].get("patch")  # the teacher patch: only when the scan suspected a target
        keep["cc"]["patch"] = None if not patch else {"pruned": len(patch["units"]), "of": patch["n_inputs"],
                                                      "channels": len(patch.get("channels", [])),
                                                      "of_channels": patch.get("n_channels", 0),
                                                      "plan": patch.get("plan"),
                                                      "success_before": patch["success_before"],
                                                      "success_after": patch["success_after"]}
        keep["cc"]["patch_target"] = (info.get("finetune") or {}).get("target_class")
    return keep


# --------------------------------------------------------------------------- Table 1


def run_config(method: str, seed: int, clean_data: str | None = None, **extra):
    from edgeclean.pipeline import RunConfig

    return RunConfig(method=method, clean_data=clean_data, seed=seed, extra=extra)


def clean_with(s: Suspect, method: str, budget: int | None, precision: str = "fp32", scan=None, capped: bool = True):
    """(cleaned model, method report, seconds): Table 1 method keys through ``pipeline._clean``.

    ``capped=False``: the budget alone sets C&C's ranks, also where a backdoor is suspected
    (``RankConfig.suspected_fraction`` off; at Table 1's 1/8 of the fp32 size the cap does not bind)."""
    from edgeclean.cc import CCConfig
    from edgeclean.clp import CLPConfig
    from edgeclean.pipeline import Stages, _clean

    cc = CCConfig(seed=s.seed)
    if not capped:
        cc = replace(cc, ranks=replace(cc.ranks, suspected_fraction=None))
    rc = {
        "none": lambda: run_config("none", s.seed),
        "rs-alone": lambda: run_config("cc", s.seed, cc=replace(cc, do_finetune=False)),
        # no budget, no cap and a dense fraction of 0: every conv gets its scaled weight back at full rank,
        # which separates what scaling removes from what rank pruning costs
        "rs-dense": lambda: run_config("cc", s.seed, cc=replace(cc, do_finetune=False, ranks=replace(
            cc.ranks, dense_fraction=0.0, suspected_fraction=None))),
        "ft-alone": lambda: run_config("cc", s.seed, cc=replace(cc, do_scale=False)),
        "cc": lambda: run_config("cc", s.seed, cc=cc),
        "ngf-1pct": lambda: run_config("ngf", s.seed, CLEAN_DATA),
        "ngf-datafree": lambda: run_config("ngf", s.seed),
        "cc+ngf": lambda: run_config("cc+ngf", s.seed, CLEAN_DATA, cc=cc),
    }
    if method.startswith("clp-u"):
        config = run_config("clp", s.seed, clp=CLPConfig(u=float(method[5:])))
    else:
        config = rc[method]()
    t0 = time.perf_counter()
    model, info = _clean(copy.deepcopy(s.model), s.spec, config, budget, precision, scan, Stages())
    return model.eval(), info, time.perf_counter() - t0


def table1_cell(s: Suspect, method: str) -> dict:
    label, uses_scan, _ = T1[method]
    cell = cell_header("table1", s, method, label=label)
    t_cell = time.perf_counter()
    out = s.dir / "t1" / f"{method}.onnx"
    scan, scan_s = s.scan() if uses_scan else (None, 0.0)
    budget = s.original_onnx()[1] // 8 if method in ("rs-alone", "ft-alone", "cc", "cc+ngf") else None
    cell["budget_bytes"] = budget
    if scan is not None:
        cell["scan_code"] = code_hash("scan.py", "synth.py", "probe.py")
    if method == "none":
        cell.update(measure(s, s.model, out))
        cell.update({"method_s": 0.0, "scan_s": 0.0})
    elif method == "clp-best":
        # Oracle: u chosen by DER on the very test set reported (CA for clean suspects). No data-free
        # rule for u exists in the paper; this is the upper bound of what CLP can do here.
        sweep = []
        for u in CLP_GRID:
            model, info, sec = clean_with(s, f"clp-u{u:g}", None)
            row = measure(s, model, out)
            sweep.append({"u": u, "method_s": round(sec, 3), "pruned": info["clp"]["pruned_channels"], **row})
        key = (lambda r: (r["der"], r["ca"])) if s.backdoored else (lambda r: (r["ca"], r["u"]))
        best = max(sweep, key=key)
        model, info, sec = clean_with(s, f"clp-u{best['u']:g}", None)
        cell.update(measure(s, model, out))
        cell.update({"method_s": round(sec, 3), "scan_s": 0.0, "details": _brief(info), "best_u": best["u"],
                     "sweep": [{k: r.get(k) for k in ("u", "pruned", "ca", "asr", "racc", "der")} for r in sweep]})
    else:
        model, info, sec = clean_with(s, method, budget, "fp32", scan)
        cell.update(measure(s, model, out))
        cell.update({"method_s": round(sec, 2), "scan_s": round(scan_s, 2), "details": _brief(info)})
    # Wall time of the defence as a user pays it: the method, plus the scan when it uses its images.
    cell["time_s"] = round(cell["method_s"] + cell["scan_s"], 2)
    cell["cell_wall_s"] = round(time.perf_counter() - t_cell, 2)
    cell["loadavg_end"] = list(os.getloadavg())
    return cell


# --------------------------------------------------------------------------- Table 2


def latency(path: Path) -> dict:
    from edgeclean.bench import bench

    out = {}
    for threads in (1, 2):
        b = bench(path, target="host", threads=threads, runs=100, warmup=10, seed=SEED)
        out[f"p50_ms_{threads}t"] = round(b["latency_ms"]["p50"], 4)
    return out


def prune_to_bytes(model, spec, budget: int):
    """torch-pruning: global channel pruning with L1 magnitude importance, the classifier head kept,
    pruning ratio found by bisection so the estimated fp32 ONNX size fits ``budget`` (less the rank
    allocator's margin, as C&C aims)."""
    import torch_pruning as tp
    from torch import nn

    from edgeclean.ranks import RankConfig, estimate_bytes

    example = torch.zeros(1, *spec.input_shape)

    def pruned(ratio):
        m = copy.deepcopy(model).eval()
        head = [x for x in m.modules() if isinstance(x, nn.Linear)][-1:]  # the copy's head, not the original's
        tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True,
                             pruning_ratio=ratio, max_pruning_ratio=0.95, ignored_layers=head).step()
        assert m(example).shape[1] == spec.num_classes
        return m

    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):  # ratio to within 0.001
        mid = (lo + hi) / 2
        m = pruned(mid)
        if estimate_bytes(m, "fp32") <= budget * (1 - RankConfig().margin):
            hi, best = mid, (m, mid)
        else:
            lo = mid
    if best is None:
        return None, None
    return best


def table2_cell(s: Suspect, method: str, ratio: int | None) -> dict:
    from edgeclean.cc import CCConfig, synthetic_data
    from edgeclean.finetune import finetune
    from edgeclean.load import input_model

    label, _ = T2[method]
    orig_path, orig_bytes = s.original_onnx()
    budget = orig_bytes // ratio if ratio else None
    cell = cell_header("table2", s, method, label=label, ratio=ratio, budget_bytes=budget, original_bytes=orig_bytes)
    t_cell = time.perf_counter()
    out = s.dir / "t2" / f"{method}_r{ratio}.onnx"
    # the scan's synthetic images: int8 calibration and C&C's fine-tuning data
    scan, scan_s = s.scan() if method in ("int8", "cc-fp32", "cc-int8", "prune+ft") else (None, 0.0)
    if scan is not None:
        cell["scan_code"] = code_hash("scan.py", "synth.py", "probe.py")
    held = len(scan.images) // 4 if scan is not None else 0  # as pipeline.run: calibrate on 3/4, judge on 1/4
    calib = dict(calib=scan.images[held:], eval_inputs=scan.images[:held]) if scan is not None else {}
    if method == "original":
        row, sec = measure(s, s.model, out), 0.0
    elif method == "int8":
        row, sec = measure(s, s.model, out, "int8", **calib), 0.0
    elif method in ("cc-fp32", "cc-int8"):
        precision = method[3:]
        # equal bytes: the ranks each budget buys, without the cap `run` puts on them where a backdoor is suspected
        model, info, sec = clean_with(s, "cc", budget, precision, scan, capped=False)
        row = measure(s, model, out, precision, **calib)
        row["details"] = _brief(info)
    else:  # prune, prune+ft
        t0 = time.perf_counter()
        model, pr = prune_to_bytes(s.model, s.spec, budget)
        if model is None:
            raise SystemExit(f"torch-pruning cannot reach {budget} bytes on {s.name}")
        row_extra = {"pruning_ratio": round(pr, 4)}
        if method == "prune+ft":
            # the SAME synthetic fine-tuning as C&C (cc.py steps 5-6): same images, config, target class
            cc = CCConfig(seed=s.seed)
            images, adv, adv_idx, _ = synthetic_data(s.model, s.spec, cc.n_synthetic, cc, scan)
            target = scan.target_class if scan.suspected else None
            # a copy as teacher: finetune freezes the teacher's parameters, and torch-pruning's dependency
            # graph needs the suspect's parameters to require grad for the next cell
            teacher = copy.deepcopy(s.model).eval()
            ft = finetune(input_model(model, s.spec), input_model(teacher, s.spec), images, adv, adv_idx,
                          replace(cc.finetune, seed=s.seed), target_class=target)
            model.eval()
            row_extra["finetune_steps"] = ft["steps"]
        sec = time.perf_counter() - t0
        row = measure(s, model, out)
        row.update(row_extra)
    cell.update(row)
    cell["fits"] = budget is None or row["bytes"] <= budget
    cell.update(latency(out))
    cell.update({"method_s": round(sec, 2), "scan_s": round(scan_s, 2), "cell_wall_s": round(time.perf_counter() - t_cell, 2),
                 "loadavg_end": list(os.getloadavg())})
    return cell


# --------------------------------------------------------------------------- Table 3


def full_width_resnet18(seed: int) -> Path:
    """A full-width ResNet-18 (1x28x28, 10 classes) saved with a card: no trained one exists here,
    so it is freshly initialised with BN statistics from 512 training images (bench_scan.py's
    ``calibrated_resnet18``); stage times depend on shapes, not on the weight values."""
    from benchmarks.bench_scan import calibrated_resnet18

    path = CACHE / "resnet18-full" / "resnet18_full.pt"
    if not path.exists():
        model, spec = calibrated_resnet18((1, 28, 28))
        spec.arch_kwargs = {"num_classes": 10, "in_channels": 1, "width": 1.0}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({"spec": spec.to_dict(), "note": "untrained, BN-calibrated"}))
    return path


def table3_cell(name: str, seed: int = SEED) -> dict:
    from edgeclean.export import parity_inputs, quantize_int8
    from edgeclean.load import load_suspect
    from edgeclean.pipeline import run
    from edgeclean.scan import ScanConfig

    path = ROOT / "models/demo_badnets_resnet18.pt" if name == "demo" else full_width_resnet18(seed)
    model, spec = load_suspect(path)
    s_dir = CACHE / name
    from edgeclean.export import ExportConfig, export

    ref = export(model, spec, s_dir / "original.onnx", "fp32", config=ExportConfig(seed=seed, write_ort=False))
    budget = ref["bytes"] // 8
    cell = {"table": "table3", "suspect": name, "method": "cc", "budget_bytes": budget, "precision": "int8",
            "seed": seed, **git_commit(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "loadavg_start": list(os.getloadavg())}
    from edgeclean.pipeline import RunConfig

    config = RunConfig(method="cc", budget=budget, precision="int8", out_dir=s_dir / "run", seed=seed, threads=1,
                       extra={"scan": ScanConfig(seed=seed, threads=1)})
    t0 = time.perf_counter()
    report, out = run(path, config)
    wall = time.perf_counter() - t0
    # Quantisation alone, re-timed on the run's own fp32 artifact (the pipeline's "export" stage
    # includes it); calibrated here on seeded inputs, the time does not depend on their content.
    # No fp32 artifact where a gate stopped the run before writing (session 17: the untrained full-width net's int8
    # agreed on 72 % of the gate's images, so nothing was written): no re-timing then.
    fp32 = Path(out) / "model.fp32.onnx"
    quant_s = None
    if fp32.exists():
        calib = parity_inputs(spec, 96, seed)
        t0 = time.perf_counter()
        quantize_int8(fp32, s_dir / "requant.onnx", calib)
        quant_s = round(time.perf_counter() - t0, 2)
    cc_t = (report.get("cc") or {}).get("timings", {})
    sb, sa = report["scan_before"]["timings"], report["scan_after"]["timings"]
    cell.update({
        "stages": report["stages"], "cc_timings": cc_t, "scan_before_timings": sb, "scan_after_timings": sa,
        "quantisation_s": quant_s, "wall_s": round(wall, 2), "size_bytes": report["size_bytes"],
        "passed": report["passed"], "gates": report["gates"], "loadavg_end": list(os.getloadavg()),
    })
    return cell


# --------------------------------------------------------------------------- render


def ordered(known: list[str], cells: dict) -> list[str]:
    """The known suspects in their order, then any other suspect that has cells (e.g. a user's model)."""
    extra = sorted({s for (s, _, _) in cells} - set(known))
    return list(known) + extra


def load_cells(table: str) -> dict:
    cells = {}
    for p in sorted((RESULTS / table).glob("*.json")):
        c = json.loads(p.read_text())
        cells[(c["suspect"], c["method"], c.get("ratio"))] = c
    return cells


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def kb(v) -> str:
    return "–" if v is None else f"{v / 1000:,.0f} kB"


def secs(v) -> str:
    return "–" if v is None else (f"{v:.2f} s" if v < 10 else f"{v:.0f} s")


def mmacs(v) -> str:
    return "–" if v is None else f"{v / 1e6:.1f} M"


def mark(c: dict) -> str:
    """† partial test set; * computed from a working tree with uncommitted changes."""
    m = ""
    if c.get("test_limit"):
        m += "†"
    if c.get("dirty"):
        m += "*"
    return m


def commits(cells: dict) -> str:
    seen = {}
    for c in cells.values():
        key = c.get("commit", "?") + ("+dirty" if c.get("dirty") else "")
        seen[key] = seen.get(key, 0) + 1
    dates = sorted(c["date"][:16] for c in cells.values()) if cells else []
    span = f"{dates[0]} – {dates[-1]} UTC" if dates else "–"
    scans = {}
    for c in cells.values():
        if c.get("scan_code"):
            scans[c["scan_code"]] = scans.get(c["scan_code"], 0) + 1
    scan_note = ("; scan code " + ", ".join(f"`{k}` ({n} cells)" for k, n in scans.items())) if scans else ""
    return ", ".join(f"`{k}` ({n} cells)" for k, n in seen.items()) + f"; computed {span}{scan_note}"


def machines(cells: dict) -> str:
    """The CPUs the cells were computed on, with their counts (a table may mix hosts after a partial rerun)."""
    seen = {}
    for c in cells.values():
        m = c.get("machine") or {}
        key = f"{m.get('cpu', '?')} ({m.get('logical_cpus', '?')} logical CPUs)"
        seen[key] = seen.get(key, 0) + 1
    return ", ".join(f"{k}: {n} cells" for k, n in seen.items()) or "–"


def runtimes(cells: dict) -> str:
    """Wall time the cached cells took to compute, per method (scans are cached per suspect and
    counted in the first cell that needed one)."""
    per = {}
    for (_, m, _), c in cells.items():
        n, t = per.get(m, (0, 0.0))
        per[m] = (n + 1, t + c.get("cell_wall_s", c.get("wall_s", 0.0)))
    return "Compute time of the cells: " + ", ".join(f"{m} {t / 60:.1f} min ({n})" for m, (n, t) in per.items())


def loads(cells: dict) -> str:
    la = [c["loadavg_start"][0] for c in cells.values() if "loadavg_start" in c]
    return f"load average (1 min) at the start of the cells {min(la):.1f}–{max(la):.1f}" if la else ""


def render_table1() -> list[str]:
    cells = load_cells("table1")
    lines = ["## Table 1 — defenses", "",
             "Command: `python benchmarks/tables.py table1` (all suspects x all methods; cached cells are skipped).",
             "CA on the 10,000 Fashion-MNIST test images; ASR and R-Acc on the triggered test images whose true label is",
             "not the target; DER (BackdoorBench) against the suspect's own fp32 ONNX; all in %. Every number is measured",
             "on the exported ONNX artifact with onnxruntime. Bytes: the ONNX file. C&C-based rows at a budget of 1/8 of",
             "the suspect's fp32 ONNX size. Time: the defence's wall time (incl. the scan when the method uses its",
             "synthetic images; excl. export and evaluation), 1 thread, on the shared machine (loaded).",
             "CLP best u is an **oracle**: u in " + "/".join(f"{u:g}" for u in CLP_GRID) +
             " chosen by DER on the same test set (by CA on clean suspects).",
             "All cells are seed 0. The C&C cells at seeds 1 and 2 (`--seed N --results benchmarks/results/seedN`) are",
             "side by side in `results/seed_spread.md` (`benchmarks/seed_spread.py`), with the worst ASR and CA drop",
             "of each suspect over the seeds.", ""]
    hdr = "| suspect | method | CA | ASR | R-Acc | DER | bytes | MACs | time |"
    lines += [hdr, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in ordered(ALL_SUSPECTS, cells):
        for m, (label, _, _) in T1.items():
            c = cells.get((s, m, None))
            if c is None:
                lines.append(f"| {s} | {label} | pending | | | | | | |")
                continue
            extra = f" (u={c['best_u']:g})" if m == "clp-best" else ""
            lines.append(f"| {s}{mark(c)} | {label}{extra} | {pct(c['ca'])} | {pct(c.get('asr'))} | {pct(c.get('racc'))} | "
                         f"{pct(c.get('der')) if m != 'none' else '–'} | {kb(c['bytes'])} | {mmacs(c['macs'])} | {secs(c['time_s']) if m != 'none' else '–'} |")
    lines += ["", "### Averages per method", "",
              "Over the 10 backdoored suite suspects plus the demo (n = cells computed); clean suspects: mean CA change.", "",
              "| method | n | CA | ASR | R-Acc | DER | bytes | MACs | time | clean suspects: n, ΔCA (pt) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, (label, _, _) in T1.items():
        bd = [c for (s, mm, _), c in cells.items() if mm == m and c.get("asr") is not None]
        cl = [c for (s, mm, _), c in cells.items() if mm == m and c.get("asr") is None]
        avg = lambda xs, k: sum(x[k] for x in xs) / len(xs) if xs else None  # noqa: E731
        dca = [100 * (c["ca"] - c["ref"]["ca"]) for c in cl]
        clean_col = f"{len(cl)}, {sum(dca) / len(dca):+.2f}" if cl else "pending"
        if not bd:
            lines.append(f"| {label} | 0 | pending | | | | | | | {clean_col} |")
            continue
        lines.append(f"| {label} | {len(bd)} | {pct(avg(bd, 'ca'))} | {pct(avg(bd, 'asr'))} | {pct(avg(bd, 'racc'))} | "
                     f"{pct(avg(bd, 'der')) if m != 'none' else '–'} | {kb(avg(bd, 'bytes'))} | {mmacs(avg(bd, 'macs'))} | "
                     f"{secs(avg(bd, 'time_s')) if m != 'none' else '–'} | {clean_col} |")
    lines += provenance(cells)
    return lines


def provenance(cells: dict) -> list[str]:
    """The footer of Tables 1 and 2: commits, loads, markers and compute time of their cells."""
    return ["", f"Cells: {commits(cells)}; {loads(cells)}; computed on {machines(cells)}. † = partial test set "
            "(`--limit`), * = uncommitted code.",
            "", runtimes(cells) + ".", ""]


def render_table2() -> list[str]:
    cells = load_cells("table2")
    lines = ["## Table 2 — compression at equal bytes", "",
             "Command: `python benchmarks/tables.py table2`. Budgets: 1/4, 1/8, 1/16 of the suspect's fp32 ONNX size.",
             "CA / ASR (%) measured on the artifact with onnxruntime; latency: `edgeclean.bench` on this host, batch 1,",
             "p50 of 100 runs after 10 warm-up, 1 and 2 onnxruntime threads — the machine is shared (loaded): latencies",
             "are noisy and the 2-thread figure competes with other jobs. Speed-up and MAC reduction are against the fp32",
             "original. int8-only has one artifact (the original's weights), listed under every budget it must meet.",
             "torch-pruning: `MetaPruner`, L1 magnitude importance, global, classifier head kept, pruning ratio bisected",
             "to the byte budget; \"+ FT\" adds C&C's synthetic fine-tuning (same images, config, steps).",
             "C&C rows: the ranks each budget buys. `run` caps them at 1/8 of the convs' bytes where a backdoor is",
             "suspected (`RankConfig.suspected_fraction`, CC_NOTES 27), so its int8 files at these budgets are smaller.", "",
             "| suspect | budget | method | fits | CA | ASR | bytes | MACs | p50 1t (ms) | p50 2t (ms) | speed-up 1t / 2t | MAC reduction |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in ordered(T2_SUSPECTS, cells):
        orig = cells.get((s, "original", None))
        if orig:
            lines.append(f"| {s}{mark(orig)} | – | fp32 original | – | {pct(orig['ca'])} | {pct(orig.get('asr'))} | "
                         f"{kb(orig['bytes'])} | {mmacs(orig['macs'])} | {orig['p50_ms_1t']:.3f} | {orig['p50_ms_2t']:.3f} | 1.00 / 1.00 | 1.0x |")
        else:
            lines.append(f"| {s} | – | fp32 original | pending | | | | | | | | |")
        for r in RATIOS:
            for m, (label, _) in T2.items():
                if m == "original":
                    continue
                c = cells.get((s, m, None if m == "int8" else r))
                if c is None:
                    lines.append(f"| {s} | 1/{r} | {label} | pending | | | | | | | | |")
                    continue
                budget = c["original_bytes"] // r
                fits = "yes" if c["bytes"] <= budget else f"**does not fit** ({kb(budget)})"
                sp = "–" if not orig else f"{orig['p50_ms_1t'] / c['p50_ms_1t']:.2f} / {orig['p50_ms_2t'] / c['p50_ms_2t']:.2f}"
                mr = "–" if not orig else f"{orig['macs'] / c['macs']:.1f}x"
                lines.append(f"| {s}{mark(c)} | 1/{r} | {label} | {fits} | {pct(c['ca'])} | {pct(c.get('asr'))} | {kb(c['bytes'])} | "
                             f"{mmacs(c['macs'])} | {c['p50_ms_1t']:.3f} | {c['p50_ms_2t']:.3f} | {sp} | {mr} |")
    lines += provenance(cells)
    return lines


def render_table3() -> list[str]:
    cells = load_cells("table3")
    lines = ["## Table 3 — time to clean", "",
             "Command: `python benchmarks/tables.py table3` — `edgeclean.pipeline.run` (method cc, budget 1/8 of the fp32",
             "ONNX size, precision int8, target host, 1 torch thread, seed 0); stage times from its report. The full-width",
             "ResNet-18 is **untrained**: a fresh network whose BN statistics come from 512 training images",
             "(`benchmarks/bench_scan.py`'s `calibrated_resnet18`); stage times depend on shapes, not weights.",
             "Seconds, on the shared 2-core machine (loaded: see the load average).", ""]
    rows = [
        ("load", lambda c: c["stages"].get("load")),
        ("synthesis (scan before)", lambda c: c["scan_before_timings"].get("synth_s")),
        ("probing (scan before, PGD)", lambda c: c["scan_before_timings"].get("probe_s")),
        ("decomposition + scaling + rank allocation", lambda c: sum(c["cc_timings"].get(k, 0) for k in ("decompose_s", "scale_s", "allocate_s", "replace_s"))),
        ("synthetic data top-up (for fine-tuning)", lambda c: c["cc_timings"].get("data_s")),
        ("teacher patch (C&C `patch`, if the run has it)", lambda c: c["cc_timings"].get("patch_s")),
        ("fine-tuning", lambda c: c["cc_timings"].get("finetune_s")),
        ("export (original + cleaned, parity, int8 incl.)", lambda c: c["stages"].get("export")),
        ("  of which quantisation (re-timed alone)", lambda c: c.get("quantisation_s")),
        ("scan after", lambda c: c["stages"].get("scan after")),
        ("bench (artifact + original, 50 runs each)", lambda c: c["stages"].get("bench")),
        ("total wall time of `run`", lambda c: c.get("wall_s")),
    ]
    names = ordered(T3_MODELS, cells)
    known = {"decompose_s", "scale_s", "allocate_s", "replace_s", "data_s", "patch_s", "finetune_s", "total_s"}
    for k in sorted({k for c in cells.values() for k in c["cc_timings"]} - known):  # stages added to C&C later
        rows.insert(-5, (f"C&C {k[:-2] if k.endswith('_s') else k}", lambda c, k=k: c["cc_timings"].get(k)))
    lines += ["| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, get in rows:
        vals = []
        for n in names:
            c = cells.get((n, "cc", None))
            v = get(c) if c else None
            vals.append("pending" if c is None else ("–" if v is None else f"{v:.1f}"))
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    extra = []
    for n in names:
        c = cells.get((n, "cc", None))
        if c:
            failed = "; ".join(f"{g} ({v['detail']})" for g, v in c["gates"].items() if not v["passed"]) or "none"
            extra.append(f"{n}: artifact {kb(c['size_bytes'])} (budget {kb(c['budget_bytes'])}), failed gates: {failed}, "
                         f"load average {c['loadavg_start'][0]:.1f} -> {c['loadavg_end'][0]:.1f}")
    lines += [""] + [f"- {e}" for e in extra] + ["", f"Cells: {commits(cells)}; computed on {machines(cells)}.", ""]
    return lines


def render_summary() -> list[str]:
    """Plain statements computed from the cells (nothing typed by hand)."""
    cells = load_cells("table1")
    by = {}
    for (s, m, _), c in cells.items():
        if c.get("asr") is not None:
            by.setdefault(m, []).append(c)
    pending = [T1[m][0] for m in T1 if T1[m][2] and not by.get(m)]
    out = ["## Summary (generated from the cells" + ("; provisional while C&C cells are pending)" if pending else ")"), ""]
    if pending:
        out.append(f"- **Pending** (depend on the C&C fine-tuning being reworked): {', '.join(pending)}; "
                   "fill with `python benchmarks/tables.py table1 --methods ft-alone cc cc+ngf` and "
                   "`python benchmarks/tables.py table2 --methods cc-fp32 cc-int8 prune+ft`, then `render`.")
    mean = lambda cs, f: sum(f(c) for c in cs) / len(cs)  # noqa: E731
    for m in ("rs-dense", "rs-alone"):
        if by.get(m):
            cs = by[m]
            out.append(f"- {T1[m][0]}: mean ASR {100 * mean(cs, lambda c: c['asr']):.1f} % (suspects "
                       f"{100 * mean(cs, lambda c: c['ref']['asr']):.1f} %), mean CA change "
                       f"{100 * mean(cs, lambda c: c['ca'] - c['ref']['ca']):+.1f} pt, artifact "
                       f"{mean(cs, lambda c: c['bytes'] / cells[(c['suspect'], 'none', None)]['bytes']):.3f} x the suspect's bytes.")
    ranked = sorted(((sum(c["der"] for c in v) / len(v), m, len(v)) for m, v in by.items() if m != "none"), reverse=True)
    if ranked:
        out.append("- Mean DER over backdoored suspects, best first: " +
                   "; ".join(f"{T1[m][0]} {100 * d:.1f} (n={n})" for d, m, n in ranked) + ".")
    for m, v in by.items():
        if m == "none":
            continue
        ok = [c for c in v if c["asr"] <= 0.05 and c["ref"]["ca"] - c["ca"] <= 0.02]
        out.append(f"- {T1[m][0]}: ASR <= 5% with CA drop <= 2 pt on {len(ok)} of {len(v)} backdoored suspects"
                   + (f" ({', '.join(c['suspect'] for c in ok)})" if ok else "") + ".")
    out += summary_table2() + summary_table3() + [""]
    return out


def summary_table2() -> list[str]:
    cells = load_cells("table2")
    orig = {s: c for (s, m, _), c in cells.items() if m == "original"}
    out = []
    int8 = [(s, c) for (s, m, _), c in cells.items() if m == "int8" and s in orig]
    if int8:
        ratios = ", ".join(f"{s} {c['bytes'] / orig[s]['bytes']:.3f}" for s, c in int8)
        fits = sorted({r for s, c in int8 for r in RATIOS if c["bytes"] <= orig[s]["bytes"] // r})
        speed = ", ".join(f"{s} {orig[s]['p50_ms_1t'] / c['p50_ms_1t']:.2f}x" for s, c in int8)
        out.append(f"- Table 2: int8 alone gives {ratios} of the fp32 bytes, so it fits "
                   + (", ".join(f"1/{r}" for r in fits) if fits else "none of the budgets 1/4, 1/8, 1/16")
                   + f"; its 1-thread latency vs fp32: {speed} (below 1 = slower).")
    for m, label in (("prune", "torch-pruning without fine-tuning"), ("prune+ft", "torch-pruning + synthetic fine-tuning"),
                     ("cc-fp32", "C&C ranks fp32"), ("cc-int8", "C&C ranks + int8")):
        cs = [c for (s, mm, _), c in cells.items() if mm == m and s in orig]
        if cs:
            cas = [100 * c["ca"] for c in cs]
            sp = [orig[c["suspect"]]["p50_ms_1t"] / c["p50_ms_1t"] for c in cs]
            out.append(f"- Table 2, {label}: CA {min(cas):.1f}–{max(cas):.1f} % over {len(cs)} cells; 1-thread speed-up "
                       f"{min(sp):.2f}–{max(sp):.2f}x; {sum(c['fits'] for c in cs)} of {len(cs)} fit their budget.")
    return out


def summary_table3() -> list[str]:
    out = []
    for (s, _, _), c in load_cells("table3").items():
        stages = {**c["stages"], **{f"C&C {k[:-2]}": v for k, v in c["cc_timings"].items() if k != "total_s"}}
        stages.pop("clean & compact", None)
        top = max(stages, key=stages.get)
        out.append(f"- Table 3, {s}: `edgeclean run` took {c['wall_s']:.0f} s (loaded, load average "
                   f"{c['loadavg_start'][0]:.1f}); the largest stage is {top} ({stages[top]:.0f} s).")
    return out


def render() -> None:
    m = machine()
    lines = ["# Benchmark results", "",
             "Generated by `python benchmarks/tables.py render` from the cached cells in `benchmarks/results/table{1,2,3}/`;",
             "no number here is typed by hand. Commands (each skips cells already cached; `--force` recomputes,",
             "`--methods M ...` / `--suspects S ...` choose cells, `--limit N` evaluates on the first N test images only):", "",
             "```", "python benchmarks/tables.py table1   # defenses", "python benchmarks/tables.py table2   # compression at equal bytes",
             "python benchmarks/tables.py table3   # time to clean", "python benchmarks/tables.py render   # this file", "```", "",
             "Machines (the CPUs the cells were computed on, shared by several jobs while they ran: \"loaded\"): "
             + "; ".join(f"Table {i}: {machines(load_cells(f'table{i}'))}" for i in (1, 2, 3)) + ". Rendered with "
             f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}. Seed {SEED} for every method "
             "(scan synthesis, C&C, NGF batch order, 1% clean subset, export parity inputs). Rendered "
             f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='minutes')}. Each cell's JSON holds its own git commit, date,",
             "machine and load average.", ""]
    lines += render_summary() + render_table1() + render_table2() + render_table3()
    tmp = RESULTS_MD.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, RESULTS_MD)
    print(f"wrote {RESULTS_MD}")


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=["table1", "table2", "table3", "render"])
    ap.add_argument("--suspects", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--ratios", nargs="*", type=int, default=list(RATIOS))
    ap.add_argument("--force", action="store_true", help="recompute cells that are already cached")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only (marked †)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--results", default=None, help="write cells under this folder instead (tests)")
    args = ap.parse_args(argv)
    global RESULTS, CACHE, RESULTS_MD
    if args.results:
        RESULTS = Path(args.results)
        CACHE = RESULTS / ".cache"
        RESULTS_MD = RESULTS / "RESULTS.md"
    torch.set_num_threads(1)
    if args.table == "render":
        render()
        return
    table = args.table
    if table == "table3":
        for name in args.suspects or T3_MODELS:
            path = RESULTS / table / f"{name}__cc.json"
            if path.exists() and not args.force:
                print(f"{table} {name}: cached")
                continue
            t0 = time.perf_counter()
            write_cell(path, table3_cell(name, args.seed))
            print(f"{table} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        return
    methods = args.methods or list(T1 if table == "table1" else T2)
    known = T1 if table == "table1" else T2
    bad = [m for m in methods if m not in known]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {list(known)}")
    names = args.suspects or (ALL_SUSPECTS if table == "table1" else T2_SUSPECTS)
    arg_of = {suspect_name(n): n for n in names}
    for name in names:
        s, name = None, suspect_name(name)
        for m in methods:
            ratios = [None] if table == "table1" or m in ("original", "int8") else args.ratios
            for r in ratios:
                path = RESULTS / table / (f"{name}__{m}" + (f"__r{r}" if r else "") + ".json")
                if path.exists() and not args.force:
                    continue
                s = s or Suspect(arg_of[name], args.limit, args.seed)
                t0 = time.perf_counter()
                cell = table1_cell(s, m) if table == "table1" else table2_cell(s, m, r)
                write_cell(path, cell)
                print(f"{table} {name} {m}{'' if r is None else f' 1/{r}'}: CA {pct(cell['ca'])} ASR {pct(cell.get('asr'))} "
                      f"bytes {cell['bytes']:,} ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
