"""Time per synthesis iteration on a full-width ResNet-18 (28x28, cifar stem), fp32 vs bf16 autocast,
and the BN-statistics loss reached (exploration, CC_NOTES section 9(d)).

    OMP_NUM_THREADS=1 python benchmarks/explore/synth_bf16.py
"""
import time, torch
from dataclasses import replace
from edgeclean.zoo import create_model
from edgeclean.load import ModelSpec
from edgeclean.synth import SynthConfig, synthesize, bn_stat_loss
torch.set_num_threads(1); torch.manual_seed(0)
kw = {"num_classes": 10, "in_channels": 1, "width": 1.0, "stem": "cifar"}
m = create_model("resnet18", **kw).eval()
spec = ModelSpec(arch="resnet18", arch_kwargs=kw, num_classes=10, input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))
# calibrate BN so the loss is meaningful
with torch.no_grad():
    m.train(); [m(torch.randn(32,1,28,28)) for _ in range(3)]; m.eval()
for bs, bf in [(32, False), (32, True), (64, True), (128, True)]:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
        x = synthesize(m, spec, 128, SynthConfig(iterations=8, batch_size=bs))
    dt = time.perf_counter() - t
    print(bs, bf, f"{dt/ (128*8):.4f} s per image-iteration", "bnloss", round(bn_stat_loss(m, spec, x), 4), flush=True)
