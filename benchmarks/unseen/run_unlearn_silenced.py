"""edgeclean run user_noise_t8.pt --budget 170KB with PatchConfig.unlearn_silenced=100 (Python API)."""
from dataclasses import replace

from edgeclean.cc import CCConfig
from edgeclean.pipeline import RunConfig, run

cc = CCConfig()
cc = replace(cc, patch=replace(cc.patch, unlearn_silenced=100))
report, out = run("user_noise_t8.pt", RunConfig(budget="170KB", out_dir="out_noise_uas100_s19", extra={"cc": cc}))
print({k: v["passed"] for k, v in report["gates"].items()}, report["size_bytes"], report["precision"])
