"""What the patch's trigger success counts on the images `edgeclean run` would use (the scan's, seed 0, topped up as
C&C does): for the unlearning plan and the channels+head plan alone, the patched teacher's share of held-out images
already in the target class, and per trigger the success as ``unlearn.success_rate`` counts it (all images the
triggered net puts in the target) against the flips to the target among the images not already there (CC_NOTES 24 (c)).

    OMP_NUM_THREADS=1 python benchmarks/explore/success_split.py SUSPECT.pt
"""
import copy, dataclasses, sys
import torch
from edgeclean.load import load_suspect, input_model
from edgeclean.scan import scan, ScanConfig
from edgeclean.cc import CCConfig, synthetic_data, scan_triggers
from edgeclean import unlearn
torch.set_num_threads(1)
model, spec = load_suspect(sys.argv[1])
sr = scan(model, spec, ScanConfig(seed=0))
images, *_ = synthetic_data(model.eval(), spec, 512, CCConfig(), sr)
T = sr.target_class
print(sys.argv[1], "scan target", T, flush=True)
for plans in [(("unlearn",),), (("channels", "head"),)]:
    teacher = copy.deepcopy(model).eval()
    cfg = dataclasses.replace(unlearn.PatchConfig(), plans=plans)
    net = input_model(teacher, spec)
    res = unlearn.patch_head(net, teacher, images, T, cfg, known=scan_triggers(sr, spec, T))
    check = res.check
    with torch.no_grad():
        base = net(check).argmax(1)
        print(plans, res.candidates, "clean target share", round(float((base == T).float().mean()), 3))
        for t in res.used:
            p = net(t.apply(check)).argmax(1)
            old = float((p == T).float().mean()); nt = base != T
            print("  ", t.kind, "old success", round(old, 3), "flip-to-target among non-target", round(float((p[nt] == T).float().mean()), 3), flush=True)
