"""Where the int8 flips come from, on the models cleaned for an int8 budget (``int8_sweep.py``'s cache).

    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/int8_flips.py /work/cache_int8_b8 [--sensitivity STEM ...] \\
        > benchmarks/results/int8_flips.txt

Per model, on the 768 held-out synthetic images (and the first 1,000 real test images, for contrast):
  * margins: share of images whose fp32 top-2 logit margin is below 0.1 / 0.25, and the largest margin
    among the images int8 flips (a flip needs a near-tie);
  * weights on the grid: the fp32 file with its conv weights rounded to the int8 grid first
    (``int8_sweep.weights_only``, what int8-aware fine-tuning could reach at best), then quantised;
    its flips against that snapped fp32 file are the flips activations alone cause.
With ``--sensitivity``: for those models, the logit error and flips when ONE activation Q/DQ pair is
removed (that tensor left float), for each pair, and for the k pairs whose removal helps most.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edgeclean.export import Int8Config, quantize_int8, run_onnx  # noqa: E402
from int8_sweep import current_format, top2_margins, weights_only  # noqa: E402


def held_out(cache: Path, stem: str) -> np.ndarray:
    return np.concatenate([np.load(cache / f"{stem}.held.npy"), np.load(cache / f"{stem}.held2_512.npy")])


def flips(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.argmax(1) != b.argmax(1)


def activation_pairs(proto) -> list[tuple[int, int]]:
    """(QuantizeLinear, DequantizeLinear) node indices of every quantised activation edge."""
    inits = {t.name for t in proto.graph.initializer}
    nodes = list(proto.graph.node)
    return [(i, j) for i, q in enumerate(nodes) if q.op_type == "QuantizeLinear" and q.input[0] not in inits
            for j, d in enumerate(nodes) if d.op_type == "DequantizeLinear" and d.input[0] == q.output[0]]


def without_pairs(proto, pairs):
    """A copy of ``proto`` in which those activation edges stay float (their Q/DQ nodes bypassed)."""
    proto = copy.deepcopy(proto)
    nodes = list(proto.graph.node)
    rename = {nodes[j].output[0]: nodes[i].input[0] for i, j in pairs}
    drop = {k for pair in pairs for k in pair}
    kept = [n for k, n in enumerate(nodes) if k not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache", type=Path)
    ap.add_argument("--sensitivity", nargs="*", default=[], help="model stems to run the per-pair sweep on")
    ap.add_argument("--real-limit", type=int, default=1000)
    args = ap.parse_args()
    import onnx

    from edgeclean.data import load_fashion_mnist

    real = load_fashion_mnist("test").x[: args.real_limit].numpy().astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="int8_flips-"))
    total = {"int8": 0, "snapped": 0, "snap_vs_fp32": 0, "images": 0}
    for f32 in sorted(args.cache.glob("*.fp32.onnx")):
        stem = f32.name.split(".")[0]
        x, calib = held_out(args.cache, stem), np.load(args.cache / f"{stem}.calib.npy")
        fp, snap, q, qs = (tmp / f"{stem}.{k}.onnx" for k in ("fp32", "snap", "int8", "snap_int8"))
        current_format(f32, fp, x[:8])
        weights_only(fp, snap)
        quantize_int8(fp, q, calib, Int8Config())
        quantize_int8(snap, qs, calib, Int8Config())
        f_x, q_x, fs = run_onnx(fp, x), run_onnx(q, x), run_onnx(snap, x)
        parts = []
        for name, f, i8 in (("synthetic", f_x, q_x), ("real", run_onnx(fp, real), run_onnx(q, real))):
            m, flipped = top2_margins(f), flips(f, i8)
            parts.append(f"{name}: margin<0.1 {np.mean(m < 0.1):.3f} <0.25 {np.mean(m < 0.25):.3f} "
                         f"flips {flipped.sum()}/{len(f)} largest flipped margin {m[flipped].max() if flipped.any() else 0:.3f}")
        n_int8, n_snap = int(flips(f_x, q_x).sum()), int(flips(fs, run_onnx(qs, x)).sum())
        n_sv = int(flips(fs, f_x).sum())
        total["int8"] += n_int8
        total["snapped"] += n_snap
        total["snap_vs_fp32"] += n_sv
        total["images"] += len(x)
        print(f"{stem} | {' | '.join(parts)} | weights on the grid: int8 flips {n_snap} (was {n_int8}), "
              f"snapped fp32 vs fp32 {n_sv}", flush=True)
    print("pooled held-out flips:", total, flush=True)

    for stem in args.sensitivity:
        fp, q = tmp / f"{stem}.fp32.onnx", tmp / f"{stem}.int8.onnx"
        x = held_out(args.cache, stem)
        f, proto = run_onnx(fp, x), onnx.load(str(q))

        def score(p, x=x, f=f) -> tuple[int, float]:
            path = tmp / "probe.onnx"
            onnx.save(p, str(path))
            out = run_onnx(path, x)
            return int(flips(f, out).sum()), round(float(np.abs(out - f).mean()), 4)

        pairs = activation_pairs(proto)
        base = score(proto)
        singles = sorted((score(without_pairs(proto, [p]))[::-1], p) for p in pairs)
        print(f"{stem}: {len(pairs)} activation Q/DQ pairs; all quantised: flips {base[0]}, mean |logit error| {base[1]}")
        print("  one pair float, best 5 (error, flips):", [s for s, _ in singles[:5]])
        for k in (1, 2, 4, 8, 16):
            print(f"  best {k} pairs float (flips, error):", score(without_pairs(proto, [p for _, p in singles[:k]])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
