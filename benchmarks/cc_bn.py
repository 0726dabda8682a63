"""The README run with the student's BatchNorm statistics frozen (``bn=eval``, the default) or adapted
to the synthetic batches (``bn=train``): artifact CA / ASR and the post-cleaning scan.

    OMP_NUM_THREADS=1 python benchmarks/cc_bn.py eval
    OMP_NUM_THREADS=1 python benchmarks/cc_bn.py train

Runs ``edgeclean.pipeline.run`` on the demo suspect at --budget 400KB (as the README does) into
/tmp/cc_bn_<mode>/ and evaluates the shipped model.onnx on the Fashion-MNIST test split.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.cc import CCConfig  # noqa: E402
from edgeclean.errors import GateFailed  # noqa: E402
from edgeclean.finetune import FinetuneConfig  # noqa: E402
from edgeclean.metrics import evaluate_files  # noqa: E402
from edgeclean.pipeline import RunConfig, run  # noqa: E402


def main():
    bn = sys.argv[1] if len(sys.argv) > 1 else "eval"
    out = f"/tmp/cc_bn_{bn}"
    try:
        run("models/demo_badnets_resnet18.pt", RunConfig(budget="400KB", out_dir=out,
                                                          extra={"cc": CCConfig(finetune=FinetuneConfig(bn=bn))}))
    except GateFailed as e:
        print("gate failed:", e)
    r = json.load(open(f"{out}/report.json"))
    res = evaluate_files(f"{out}/model.onnx", attack="badnets", target=0)
    after = r["scan_after"]
    print(f"bn={bn}: {r['precision']} {r['size_bytes']:,} B  CA {100 * res['ca']:.2f}  ASR {100 * res['asr']:.2f}  "
          f"scan after: {'SUSPECTED' if after['suspected'] else 'not suspected'} (score {after['score']:.3f}, class {after['target_class']})")


if __name__ == "__main__":
    main()
