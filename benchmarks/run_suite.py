"""The whole product path on the suite: `edgeclean run SUSPECT --budget B --precision P` for each suspect, as a user
runs it (scan, C&C, export with its gates, scan after, bench), then the artifact scored on the test set.

    OMP_NUM_THREADS=1 python benchmarks/run_suite.py benchmarks/suspects/*.pt models/demo_badnets_resnet18.pt \\
        [--fraction 0.125] [--precision int8] [--out benchmarks/results/run_suite.json]

B is --fraction of the suspect's own fp32 ONNX file (the original, as `run` exports it). Per suspect: the gates
(parity, budget, backdoor), the int8 agreement with fp32 on the gate's held-out synthetic images and its 95%
interval, int8 / fp32 bytes, the artifact's bytes against B, the stage times, and CA / ASR / R-Acc / redirect
(``metrics.redirect``: a backdoor moved to another class) of the artifact (onnxruntime, full test split, the card's
trigger) against the suspect's CA / ASR. Real data is only used to score.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from case import overrides  # noqa: E402
from edgeclean.cc import CCConfig  # noqa: E402
from edgeclean.export import ExportConfig, export  # noqa: E402
from edgeclean.load import load_suspect, read_card  # noqa: E402
from edgeclean.metrics import evaluate_files  # noqa: E402
from edgeclean.pipeline import RunConfig, run  # noqa: E402


def one(path: Path, args, out_root: Path) -> dict:
    card = read_card(path)
    model, spec = load_suspect(path)
    with tempfile.TemporaryDirectory() as tmp:
        original = export(model, spec, Path(tmp) / "orig.onnx", config=ExportConfig(write_ort=False))["bytes"]
    budget = int(original * args.fraction)
    t0 = time.perf_counter()
    out = out_root / path.stem
    cc = CCConfig(seed=args.seed)  # what run() uses when given none; the options below change it
    if args.suspected_fraction is not None:
        cc = replace(cc, ranks=replace(cc.ranks, suspected_fraction=args.suspected_fraction or None))
    if args.bf16 != "auto":  # every autocast switch of the C&C stage: synthesis, the patch, distillation
        on = args.bf16 == "on"
        cc = replace(cc, synth_bf16=on, finetune=replace(cc.finetune, bf16=on), patch=replace(cc.patch, bf16=on))
    if args.patch_success_below is not None:
        cc = replace(cc, patch=replace(cc.patch, success_below=args.patch_success_below))
    if args.patch_max_channel_fraction is not None:
        cc = replace(cc, patch=replace(cc.patch, max_channel_fraction=args.patch_max_channel_fraction))
    if args.patch_unlearn_silenced is not None:
        cc = replace(cc, patch=replace(cc.patch, unlearn_silenced=args.patch_unlearn_silenced))
    if args.patch_channels_unlearn_below is not None:
        cc = replace(cc, patch=replace(cc.patch, channels_unlearn_below=args.patch_channels_unlearn_below))
    if args.patch_plans is not None:
        cc = replace(cc, patch=replace(cc.patch, **overrides(cc.patch, [f"plans={args.patch_plans}"])))
    # the gates are in the report
    report, _ = run(path, RunConfig(budget=budget, precision=args.precision, out_dir=out, seed=args.seed,
                                    extra={"cc": cc}))
    cc_report = report.get("cc", {})
    patch = cc_report.get("patch") or {}
    row = {"model": path.stem, "attack": card.get("attack"), "target": card.get("target"),
           "original_fp32_bytes": original, "budget_bytes": budget, "bytes": report["size_bytes"],
           "precision": report["precision"], "gates": {k: v["passed"] for k, v in report["gates"].items()},
           "gate_details": {k: v["detail"] for k, v in report["gates"].items()},
           "scan_before": round(report["scan_before"]["score"], 3), "scan_after": round(report["scan_after"]["score"], 3),
           "stages_s": report["stages"], "bf16": cc_report.get("distillation", {}).get("bf16"),
           "rank_policy": cc_report.get("rank_policy"), "seed": args.seed,
           "patch": {k: (len(v) if isinstance(v, list) else v) for k, v in patch.items()
                     if k in ("plan", "channels", "units", "success_after", "student_success")}
           | {"candidates": patch.get("candidates")},  # every plan tried, as plan_rank saw it
           "wall_s": round(time.perf_counter() - t0, 1)}
    if report.get("int8"):
        row["int8"] = report["int8"]
    if report.get("artifact"):
        attack = card.get("attack") if card.get("attack") not in (None, "none") else None
        after = evaluate_files(str(out / "model.onnx"), dataset=card.get("dataset", "fashion-mnist"), attack=attack,
                               target=card.get("target"), card=str(path.with_suffix(".json")), reference=str(path))
        row["ca"], row["asr"], row["racc"], row["redirect"] = after["ca"], after.get("asr"), after.get("racc"), after.get("redirect")
        row["suspect_ca"], row["suspect_asr"] = after["reference"]["ca"], after["reference"].get("asr")
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspects", nargs="+")
    ap.add_argument("--fraction", type=float, default=1 / 8, help="budget as a share of the original fp32 ONNX file")
    ap.add_argument("--precision", default="int8", choices=["auto", "fp32", "int8"])
    ap.add_argument("--suspected-fraction", type=float, default=None,
                    help="RankConfig.suspected_fraction for this run (0: none); default: the package's")
    ap.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                    help="bf16 autocast in C&C; auto: where the CPU has native bf16 (the package's default)")
    ap.add_argument("--patch-success-below", type=float, default=None,
                    help="PatchConfig.success_below for this run (the patch's stopping bound); default: the package's")
    ap.add_argument("--patch-max-channel-fraction", type=float, default=None,
                    help="PatchConfig.max_channel_fraction: the most BN channels the patch may silence (default 0.1)")
    ap.add_argument("--patch-plans", default=None,
                    help='PatchConfig.plans for this run, stages joined by "+", plans by "/", e.g. '
                         '"channels+head/channels+unlearn/head/unlearn"; default: the package\'s')
    ap.add_argument("--patch-channels-unlearn-below", type=float, default=None,
                    help="PatchConfig.channels_unlearn_below: the bound for unlearning after the channels stage")
    ap.add_argument("--patch-unlearn-silenced", type=int, default=None,
                    help="PatchConfig.unlearn_silenced: unlearning steps after channels that silenced alone (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="run's seed (scan synthesis, C&C, export)")
    ap.add_argument("--keep", default=None, help="keep each run's output folder under this folder")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        rows = [one(Path(p), args, root) for p in args.suspects]
    if args.out:
        dest = Path(args.out)
        part = dest.with_suffix(".tmp")
        part.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        part.replace(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
