"""`edgeclean run MODEL --budget 96KB --precision fp32` through the API, with the teacher patch's plans restricted
(``PatchConfig.plans``), to compare a plan with the one `plan_rank` chose (CC_NOTES 25 (e)).

    OMP_NUM_THREADS=1 python benchmarks/unseen/run_plans.py color_redcross_t3.pt OUT channels+head,unlearn
    OMP_NUM_THREADS=1 python benchmarks/unseen/run_plans.py color_filter_t7.pt OUT head

Score the artifact with ``eval_user.py OUT/model.onnx KIND TARGET``.
"""
import json
import sys

import torch

from edgeclean.cc import CCConfig
from edgeclean.pipeline import RunConfig, run
from edgeclean.unlearn import PatchConfig


def main(model: str, out: str, plans: str) -> None:
    torch.set_num_threads(1)
    chosen = tuple(tuple(plan.split("+")) for plan in plans.split(","))
    report, _ = run(model, RunConfig(budget="96KB", precision="fp32", out_dir=out,
                                     extra={"cc": CCConfig(patch=PatchConfig(plans=chosen))}))
    print(json.dumps({k: report.get(k) for k in ("passed", "size_bytes")}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
