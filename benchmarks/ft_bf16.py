"""Distillation step time, fp32 vs bf16 autocast, for the 1/8 student of a full-width ResNet-18 (28x28).

    OMP_NUM_THREADS=1 python benchmarks/ft_bf16.py [THREADS]

Steps alternate between fp32 and bf16 so both see the same machine load; prints seconds per
step (batch 64: teacher forward + student forward/backward), three pairs of two steps each.
"""
import time, torch, sys
sys.path.insert(0, "/work/main")
from edgeclean.zoo import create_model
from edgeclean.cc import CCConfig, clean_and_compact
from edgeclean.load import ModelSpec
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
spec = ModelSpec(arch="resnet18", num_classes=10, input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))
t = create_model("resnet18", num_classes=10, in_channels=1).eval()
from edgeclean.ranks import estimate_bytes
s, _ = clean_and_compact(t, spec, budget_bytes=int(estimate_bytes(t) / 8), config=CCConfig(do_finetune=False, do_scale=False))
s.train(); opt = torch.optim.Adam(s.parameters(), 1e-3)
x = torch.rand(64, 1, 28, 28)
def step(bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad(): tl = t(x).float()
        sl = s(x).float()
    loss = ((sl - tl) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
for bf16 in (False, True): step(bf16)
res = {False: [], True: []}
for r in range(3):
    for bf16 in (False, True):
        t0 = time.perf_counter(); step(bf16); step(bf16); res[bf16].append((time.perf_counter() - t0) / 2)
print({k: [round(v, 2) for v in vs] for k, vs in res.items()})
