"""Measure an ONNX artifact on the runtime it will run on (onnxruntime, CPU).

This module is the device side of edgeclean: it imports only the standard library, numpy and
onnxruntime — never torch — so it runs in the slim device-lab image and, unchanged, inside the
emulated arm64 root (``python3 -m edgeclean.bench MODEL --json``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

# CPU features that decide which kernels onnxruntime picks; reported so numbers can be compared.
SIMD_FLAGS = {
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "fphp", "sve", "sve2", "i8mm", "bf16", "dotprod",
}


def cpu_info() -> dict:
    """CPU model, core count and feature flags, read from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key == "cpu part" and model in ("", platform.machine()):
            model = f"{platform.machine()} part {value.strip()}"
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "simd": sorted(set(flags) & SIMD_FLAGS),
        "flags": flags,
    }


def int8_kernels_saturate(info: dict | None = None) -> bool:
    """Whether onnxruntime's int8 convolutions can saturate on this CPU: x86-64 without VNNI, where the
    u8 x s8 kernels add products in pairs into 16 bits (VPMADDUBSW); VNNI (VPDPBUSD) and Arm do not.
    onnxruntime's answer is 7-bit weights (``reduce_range``: "may improve the accuracy ... on non-VNNI
    machine, especially for per-channel mode")."""
    info = info or cpu_info()
    x86 = info["machine"].lower() in ("x86_64", "amd64", "i686", "i386")
    return x86 and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(info["flags"])


def _numpy_dtype(onnx_type: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    if onnx_type not in table:
        raise ValueError(f"input type {onnx_type} is not supported by the benchmark")
    return table[onnx_type]


def make_inputs(session, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs in the raw input space [0, 1] for every graph input; symbolic dims -> ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        feeds[inp.name] = rng.random(shape, dtype=np.float64).astype(_numpy_dtype(inp.type))
    return feeds


def session_options(threads: int | None, profile_prefix: str | None = None, config: dict | None = None):
    """``config``: onnxruntime session config entries (e.g. ``{"session.disable_quant_qdq": "1"}``, which folds a
    weights-only int8 file's DequantizeLinear nodes into float weights at load)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, str(value))
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def ops_ran(model_path: str | Path, feeds: dict, threads: int | None = None, config: dict | None = None) -> dict:
    """Which operators onnxruntime actually executed (after its graph fusions), from its profiler."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort.InferenceSession(str(model_path), session_options(threads, os.path.join(tmp, "prof"), config),
                                    providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    counts: dict[str, int] = {}
    providers = set()
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and "op_name" in args:
            counts[args["op_name"]] = counts.get(args["op_name"], 0) + 1
            providers.add(args.get("provider", "?"))
    return {"op_counts": dict(sorted(counts.items())), "providers": sorted(providers)}


def percentile_summary(times_ms: list[float]) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99)),
        "mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()), "max": float(t.max()),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def bench_host(
    model_path: str | Path,
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
    seed: int = 0,
    inputs_path: str | Path | None = None,
    outputs_path: str | Path | None = None,
    profile: bool = True,
    session_config: dict | None = None,
) -> dict:
    """Time ``model_path`` with onnxruntime in this process (``session_config``: see ``session_options``).

    ``inputs_path`` (an .npz of feeds) replaces the seeded inputs and ``outputs_path`` receives the
    outputs of the first inference (.npz) — that is how the arm64 run is compared with the host run.
    """
    import onnxruntime as ort

    model_path = Path(model_path)
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(model_path), session_options(threads, config=session_config),
                                providers=["CPUExecutionProvider"])
    create_ms = (time.perf_counter() - t0) * 1e3
    if inputs_path is not None:
        with np.load(inputs_path) as npz:
            feeds = {k: npz[k] for k in npz.files}
    else:
        feeds = make_inputs(sess, seed)
    t0 = time.perf_counter()
    outputs = sess.run(None, feeds)
    first_ms = (time.perf_counter() - t0) * 1e3
    if outputs_path is not None:
        names = [o.name for o in sess.get_outputs()]
        np.savez(outputs_path, **dict(zip(names, outputs)))
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    so = sess.get_session_options()
    info = {
        "model": str(model_path),
        "file_bytes": model_path.stat().st_size,
        "target": "host",
        "emulated": False,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "providers": sess.get_providers(),
        # 0 means onnxruntime's default: one thread per physical core.
        "threads": threads or so.intra_op_num_threads or "default",
        "session_config": dict(session_config or {}),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
        "session_create_ms": create_ms,
        "first_inference_ms": first_ms,
        "warmup": warmup,
        "runs": runs,
        "latency_ms": percentile_summary(times),
        "cpu": cpu_info(),
    }
    if profile:
        info["ops_ran"] = ops_ran(model_path, feeds, threads, session_config)
    info["peak_rss_mb"] = peak_rss_mb()
    return info


def bench(
    model_path: str | Path,
    target: str = "host",
    threads: int | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    seed: int = 0,
    session_config: dict | None = None,
) -> dict:
    """Benchmark an ONNX file on ``target``: "host" (this machine) or "arm64" (native or emulated).

    Default runs / warm-up: 100 / 10, or 20 / 3 under emulation (qemu is ~100x slower). ``session_config``:
    onnxruntime session config entries, for every session timed.
    """
    from .errors import UserError

    emulated = target == "arm64" and platform.machine().lower() not in ("aarch64", "arm64")
    runs = runs if runs is not None else (20 if emulated else 100)
    warmup = warmup if warmup is not None else (3 if emulated else 10)

    path = Path(model_path)
    try:
        ok = path.is_file() and os.access(path, os.R_OK)
    except OSError:  # e.g. a mounted folder this user may not enter
        ok = False
    if not ok:
        what = "cannot read" if os.path.lexists(path) or path.parent.exists() and not os.access(path.parent, os.X_OK) else "no such"
        raise UserError(f"{what} model file: {path}; give the path to a readable .onnx or .ort file")
    if target == "host":
        _check_loadable(path)
        return bench_host(path, threads=threads, runs=runs, warmup=warmup, seed=seed, session_config=session_config)
    if target == "arm64":
        from .arm64 import bench_arm64

        _check_loadable(path)
        return bench_arm64(path, threads=threads, runs=runs, warmup=warmup, seed=seed, session_config=session_config)
    raise UserError(f"unknown target {target!r}; use host or arm64")


benchmark = bench  # the package-level name (``edgeclean.bench`` is this module)


def parse_session_config(items) -> dict[str, str]:
    """["session.disable_quant_qdq=1", ...] -> {"session.disable_quant_qdq": "1", ...}."""
    from .errors import UserError

    config = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--session-config {item!r} is not KEY=VALUE; e.g. session.disable_quant_qdq=1")
        config[key.strip()] = value.strip()
    return config


def _check_loadable(path: Path) -> None:
    """Fail with one line (exit 2) when onnxruntime cannot read the file."""
    import onnxruntime as ort

    from .errors import UserError

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad input file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"onnxruntime cannot load {path} ({first}); give an ONNX model exported by edgeclean") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point used inside the emulated arm64 root, where neither click nor torch exists."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgeclean.bench")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", default=None, help=".npz of feeds to use instead of seeded inputs")
    ap.add_argument("--outputs", default=None, help="write the first inference's outputs to this .npz")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--session-config", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    info = bench_host(args.model, args.threads, args.runs, args.warmup, args.seed, args.inputs, args.outputs,
                      profile=not args.no_profile, session_config=parse_session_config(args.session_config))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
