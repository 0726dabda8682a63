"""What factorisation buys at run time, and whether the shipped artifact is trustworthy.

For a full-width ResNet-18 (CIFAR stem, 3x32x32) and the same network with every conv Tucker-2
factorised (edgeclean.factorize, HOSVD truncation, one rank fraction for all layers chosen so the
model has ~1/8 of the parameters):

* onnxruntime latency of the original fp32 ONNX vs the factorised one, 1 and 2 threads, next to
  the MAC and size reductions (honest figures: on small inputs the 3-conv blocks may not pay off);
* the arm64 emulated run (aarch64 onnxruntime under qemu-user) vs the host run: max abs diff;
* data-free int8 of the factorised model: top-1 agreement with its fp32 artifact on synthetic
  images (edgeclean.synth, a different seed than the calibration set) and on seeded noise, and the
  int8 / fp32 file-size ratio.

    nice -n 15 /work/venv/bin/python benchmarks/bench_export.py [--model suspect.pt] [--runs 200] [--no-int8]

Session 10, AVX2-only EPYC, nothing else running (CC_NOTES 22 (d), results/bench_export*_s10*.json): MACs / 7.74,
1-thread p50 speed-up x6.60-6.78 over three runs; 2 threads x4.5 (slower than 1 thread on that 2-vCPU VM).

Without --model the weights are random (seeded) with non-trivial BN statistics: latency does not
depend on the values, but int8 agreement on a random network is not what a trained one gives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean import arm64  # noqa: E402
from edgeclean.export import ExportConfig, export, run_onnx  # noqa: E402
from edgeclean.factorize import factorizable, factorize_conv, full_ranks, swap_modules  # noqa: E402
from edgeclean.load import ModelSpec, load_suspect  # noqa: E402
from edgeclean.summary import count_macs, count_params  # noqa: E402
from edgeclean.zoo import create_model  # noqa: E402


def random_resnet18(seed: int = 0) -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=10, in_channels=3, width=1.0, stem="cifar")
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    spec = ModelSpec(arch="resnet18", arch_kwargs={"width": 1.0, "stem": "cifar"}, num_classes=10,
                     input_shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    return model.eval(), spec


def targets(model: nn.Module) -> list[str]:
    # The stem conv (3 input channels) has nothing to factorise over its input mode.
    return [n for n, m in model.named_modules() if factorizable(m) and m.in_channels > 3]


def factorise(model: nn.Module, fraction: float) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    names = set(targets(out))

    def replace(conv, name):
        r_in, r_out = full_ranks(conv)
        return factorize_conv(conv, max(1, round(r_in * fraction)), max(1, round(r_out * fraction)))

    swap_modules(out, lambda m, n: n in names, replace)
    return out.eval()


def factorise_to(model: nn.Module, ratio: float) -> tuple[nn.Module, float]:
    """Bisection on one rank fraction for all layers so params(factorised) ~= ratio * params."""
    goal, lo, hi = ratio * count_params(model), 0.01, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if count_params(factorise_shapes_only(model, mid)) > goal:
            hi = mid
        else:
            lo = mid
    return factorise(model, lo), lo


def factorise_shapes_only(model: nn.Module, fraction: float) -> nn.Module:
    # Parameter counting needs only shapes: build the blocks without the SVD.
    from edgeclean.factorize import FactorizedConv

    with torch.device("meta"):
        import copy

        out = copy.deepcopy(model).to("meta")
    names = set(targets(out))

    def replace(conv, name):
        r_in, r_out = full_ranks(conv)
        r_in, r_out = max(1, round(r_in * fraction)), max(1, round(r_out * fraction))
        if conv.kernel_size == (1, 1):
            r_in = r_out = min(r_in, r_out)
        return FactorizedConv(conv, r_in, r_out)

    swap_modules(out, lambda m, n: n in names, replace)
    return out


def paired_latency(path_a: Path, path_b: Path, threads: int, runs: int, warmup: int) -> tuple[dict, dict]:
    """Latency of two models measured in alternation (a, b, a, b, ...) in one process.

    The machine is shared (2 cores, other jobs): alternating spreads any load spike over both
    models instead of letting it land on whichever ran during it. Sessions as in edgeclean.bench.
    """
    import onnxruntime as ort

    from edgeclean.bench import make_inputs, percentile_summary, session_options

    sessions = [ort.InferenceSession(str(p), session_options(threads), providers=["CPUExecutionProvider"])
                for p in (path_a, path_b)]
    feeds = [make_inputs(s, seed=0) for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times = ([], [])
    for _ in range(runs):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = []
    for t in times:
        p = percentile_summary(t)
        out.append({"p50_ms": p["p50"], "p90_ms": p["p90"], "mean_ms": p["mean"], "min_ms": p["min"], "std_ms": p["std"]})
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a checkpoint to use instead of a random ResNet-18")
    ap.add_argument("--ratio", type=float, default=1 / 8, help="target parameter ratio of the factorised model")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--synth", type=int, default=64, help="synthetic images for calibration (and as many for evaluation)")
    ap.add_argument("--arm64-runs", type=int, default=3)
    ap.add_argument("--latency-only", action="store_true", help="skip the arm64 and int8 parts")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 part (its synthesis takes ~50 min on 2 cores)")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t_start = time.perf_counter()

    if args.model:
        model, spec = load_suspect(args.model)
    else:
        model, spec = random_resnet18()
    small, fraction = factorise_to(model, args.ratio)
    result = {
        "model": args.model or "resnet18 (random seeded weights, width 1.0, cifar stem)",
        "input_shape": list(spec.input_shape),
        "rank_fraction": round(fraction, 4),
        "params": {"original": count_params(model), "factorised": count_params(small)},
        "macs": {"original": count_macs(model, spec.input_shape), "factorised": count_macs(small, spec.input_shape)},
    }
    result["params"]["ratio"] = result["params"]["factorised"] / result["params"]["original"]
    result["macs"]["reduction_x"] = result["macs"]["original"] / result["macs"]["factorised"]
    print(f"factorised {len(targets(model))} convs at rank fraction {fraction:.3f}: params x{result['params']['ratio']:.3f}, "
          f"MACs /{result['macs']['reduction_x']:.2f}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        orig_info = export(model, spec, tmp / "orig.onnx", config=ExportConfig(write_ort=False))
        fact_info = export(small, spec, tmp / "fact.onnx")
        result["fp32"] = {
            "bytes": {"original": orig_info["bytes"], "factorised": fact_info["bytes"]},
            "parity_max_abs_diff": {"original": orig_info["parity"]["max_abs_diff"],
                                    "factorised": fact_info["parity"]["max_abs_diff"]},
            "conv_nodes": {"original": orig_info["graph"]["ops"].get("Conv", 0),
                           "factorised": fact_info["graph"]["ops"].get("Conv", 0)},
        }
        lat = {}
        for t in [int(x) for x in args.threads.split(",")]:
            a, b = paired_latency(tmp / "orig.onnx", tmp / "fact.onnx", t, args.runs, args.warmup)
            lat[f"{t}_threads"] = {"original": a, "factorised": b, "speedup_p50": a["p50_ms"] / b["p50_ms"],
                                   "speedup_min": a["min_ms"] / b["min_ms"]}
            print(f"{t} thread(s): original p50 {a['p50_ms']:.2f} ms, factorised p50 {b['p50_ms']:.2f} ms, "
                  f"speedup x{a['p50_ms'] / b['p50_ms']:.2f} (min-latency x{a['min_ms'] / b['min_ms']:.2f}; "
                  f"MACs /{result['macs']['reduction_x']:.2f})", file=sys.stderr)
        result["load_average_1min"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
        result["latency"] = lat

        if args.latency_only:
            return finish(result, t_start, args.out)
        if arm64.is_arm64_host() or arm64.is_ready():
            info = arm64.bench_arm64(tmp / "fact.onnx", runs=args.arm64_runs, warmup=1)
            result["arm64"] = {"emulated": info["emulated"], "max_abs_diff_vs_host": info.get("host_compare", {}).get("max_abs_diff"),
                               "top1_equal": info.get("host_compare", {}).get("top1_equal"),
                               "max_abs_logit": info.get("host_compare", {}).get("max_abs_output"),
                               "p50_ms_emulated": info["latency_ms"]["p50"], "ops_ran": info["ops_ran"]["op_counts"]}
        else:
            result["arm64"] = "not measured: build the root with `edgeclean bench --target arm64 --setup`"
        print(f"arm64: {result['arm64']}", file=sys.stderr)
        if args.no_int8:
            return finish(result, t_start, args.out)

        from edgeclean.synth import SynthConfig, synthesize

        t0 = time.perf_counter()
        calib = synthesize(small, spec, args.synth, SynthConfig(seed=0)).numpy()
        evals = synthesize(small, spec, args.synth, SynthConfig(seed=1)).numpy()
        synth_s = time.perf_counter() - t0
        q = export(small, spec, tmp / "int8.onnx", precision="int8", calib=calib, eval_inputs=evals,
                   config=ExportConfig(int8_min_agreement=0.0))
        noise = np.random.default_rng(7).random((256, *spec.input_shape), dtype=np.float32)
        a, b = run_onnx(tmp / "int8.fp32.onnx", noise), run_onnx(tmp / "int8.onnx", noise)
        result["int8"] = {
            "calibration": f"{args.synth} synthetic images (edgeclean.synth seed 0, {synth_s:.0f}s for both sets)",
            "top1_agreement_synthetic": q["int8_agreement"]["given"]["top1_agreement"],
            "synthetic_eval_samples": q["int8_agreement"]["given"]["samples"],
            "top1_agreement_seeded_noise": float(np.mean(a.argmax(1) == b.argmax(1))),
            "fp32_bytes": q["fp32_bytes"], "int8_bytes": q["int8_bytes"], "size_ratio": q["int8_size_ratio"],
        }
        if arm64.is_arm64_host() or arm64.is_ready():
            info = arm64.bench_arm64(tmp / "int8.onnx", runs=args.arm64_runs, warmup=1)
            cmp = info.get("host_compare", {})
            result["int8"]["arm64_vs_host"] = {"max_abs_diff": cmp.get("max_abs_diff"), "max_abs_logit": cmp.get("max_abs_output"),
                                               "top1_equal": cmp.get("top1_equal"), "ops_ran": info["ops_ran"]["op_counts"]}
        f32, q8 = paired_latency(tmp / "int8.fp32.onnx", tmp / "int8.onnx", 1, args.runs, args.warmup)
        result["int8"]["p50_ms_1_thread"] = {"fp32": f32["p50_ms"], "int8": q8["p50_ms"]}
        print(f"int8: {result['int8']}", file=sys.stderr)
    return finish(result, t_start, args.out)


def finish(result: dict, t_start: float, out: str | None) -> int:
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
