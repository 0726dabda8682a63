"""`edgeclean run MODEL --budget 170KB` (the Python API, 1 thread) with the distillation's feature matching at a given
weight (``FinetuneConfig.feature_weight``; 0 turns it off), for the user-defined nets of CC_NOTES 20 (CC_NOTES 24 (d)).
Score the cleaned model with ``eval_user.py OUT/cleaned.safetensors KIND TARGET``.

    OMP_NUM_THREADS=1 python benchmarks/unseen/run_features.py user_clean.pt 100 OUT
"""
import json
import sys

import torch

from edgeclean.cc import CCConfig
from edgeclean.finetune import FinetuneConfig
from edgeclean.pipeline import RunConfig, run

torch.set_num_threads(1)
path, weight, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
cfg = RunConfig(budget="170KB", out_dir=out, extra={"cc": CCConfig(finetune=FinetuneConfig(feature_weight=weight))})
report, _ = run(path, cfg)
print(json.dumps({"gates": report.get("gates"), "precision": report.get("precision")}, default=str))
