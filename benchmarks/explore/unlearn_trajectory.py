"""The unlearning plan's success after each check on the images `edgeclean run` would use (the scan's, seed 0, topped
up as C&C does), with the default plateau stop and with 300 steps and one check (CC_NOTES 23 (f)).

    python benchmarks/explore/unlearn_trajectory.py [SUSPECT.pt]   # default: benchmarks/suspects/vgg11_badnets.pt
"""
import copy, dataclasses, sys, time
import torch
from edgeclean.load import load_suspect, input_model
from edgeclean.scan import scan, ScanConfig
from edgeclean.cc import CCConfig, synthetic_data, scan_triggers
from edgeclean import unlearn
torch.set_num_threads(2)
model, spec = load_suspect(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/suspects/vgg11_badnets.pt")
sr = scan(model, spec, ScanConfig(seed=0))
images, *_ = synthetic_data(model.eval(), spec, 512, CCConfig(), sr)
print("scan target", sr.target_class, "images", len(images), flush=True)
orig = unlearn.success_rate
for label, over in [("default", {}), ("no plateau stop, 300 steps", {"unlearn_below": 0.0})]:
    log = []
    real_stage = unlearn.unlearn_stage
    def stage(*a, **k):
        def logged(n, imgs, t):
            s = orig(n, imgs, t); log.append((t.kind, round(s, 3))); return s
        unlearn.success_rate = logged
        try:
            return real_stage(*a, **k)
        finally:
            unlearn.success_rate = orig
    teacher = copy.deepcopy(model).eval()
    cfg = dataclasses.replace(unlearn.PatchConfig(), plans=(("unlearn",),), **over)
    if over:  # disable the plateau stop by checking once at the end
        cfg = dataclasses.replace(cfg, unlearn_check=300)
    unlearn.unlearn_stage = stage
    t = time.time()
    res = unlearn.patch_head(input_model(teacher, spec), teacher, images, sr.target_class, cfg,
                             known=scan_triggers(sr, spec, sr.target_class))
    unlearn.unlearn_stage = real_stage
    print(label, f"{time.time()-t:.0f}s", res.candidates, log, flush=True)
