"""The README's command on the committed demo suspect, as a user runs it, then its artifact scored on the test set.

    python benchmarks/readme_demo.py --out benchmarks/results/readme_demo_sN.json [--threads 2]

Runs `edgeclean run models/demo_badnets_resnet18.pt --budget 400KB --out DIR` (a separate process: wall time and
peak RSS are the command's own), then `edgeclean evaluate DIR/model.onnx --reference models/demo_badnets_resnet18.pt
--json`. Writes the command, its exit code, wall time, peak RSS, the report's headline fields and the scores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_badnets_resnet18.pt"
REPORT_KEYS = ("size_bytes", "budget_bytes", "precision", "stages", "gates", "passed", "int8", "scan_before",
               "scan_after", "rank_policy", "rank_cap_bytes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the command (default: unset)")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("edgeclean")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "demo"
        cmd = [str(exe), "run", str(DEMO), "--budget", "400KB", "--out", str(out_dir)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = json.loads((out_dir / "report.json").read_text())
        ev = subprocess.run([str(exe), "evaluate", str(out_dir / "model.onnx"), "--reference", str(DEMO), "--json"],
                            env=env, capture_output=True, text=True, check=True)
    cc = report.get("cc", {})
    row = {"command": f"{'OMP_NUM_THREADS=%d ' % args.threads if args.threads else ''}edgeclean run "
                      "models/demo_badnets_resnet18.pt --budget 400KB --out DIR; edgeclean evaluate DIR/model.onnx "
                      "--reference models/demo_badnets_resnet18.pt --json",
           "exit_code": proc.returncode, "wall_s": round(wall, 1), "peak_rss_kb": rss_kb,
           "run": {k: report.get(k) for k in REPORT_KEYS}
           | {"patch_plan": (cc.get("patch") or {}).get("plan"), "distillation": cc.get("distillation")},
           "evaluate": json.loads(ev.stdout)}
    dest = Path(args.out)
    part = dest.with_suffix(".tmp")
    part.write_text(json.dumps(row, indent=1))
    part.replace(dest)
    e = row["evaluate"]
    print(f"exit {proc.returncode} in {wall:.0f} s; {report.get('size_bytes'):,} B {report.get('precision')}; "
          f"CA {100 * e['ca']:.2f} %, ASR {100 * e['asr']:.2f} %, R-Acc {100 * e['racc']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
