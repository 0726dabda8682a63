"""Is the synthetic data or the fine-tuning the bottleneck of C&C? Distil the 1/8-size student on
unlabelled REAL training images vs on the ZeroQ synthetic images, same loop, and watch CA / ASR.

    OMP_NUM_THREADS=1 python benchmarks/cc_kd_data.py --data real
    OMP_NUM_THREADS=1 python benchmarks/cc_kd_data.py --data synth
    OMP_NUM_THREADS=1 python benchmarks/cc_kd_data.py --data synth --bn eval

The student: the suspect truncated to 1/8 of its fp32 size by C&C's rank allocation (no scaling,
no patch). The loop is ``finetune.finetune``'s distillation term alone (augmentation, T=4, Adam
1e-3, cosine), evaluated every --eval-every steps on the first 1,000 Fashion-MNIST test images.
Synthetic images: ``cc.synthetic_data`` (scan defaults), cached in .cache/cc_synth/ like cc_variants.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edgeclean.cc import CCConfig, clean_and_compact  # noqa: E402
from edgeclean.data import load_fashion_mnist  # noqa: E402
from edgeclean.finetune import FinetuneConfig, augment, kd_loss  # noqa: E402
from edgeclean.load import input_model  # noqa: E402
from edgeclean.ranks import estimate_bytes  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case import Case  # noqa: E402
from cc_variants import data_for  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suspect", default="models/demo_badnets_resnet18.pt")
    ap.add_argument("--data", choices=["real", "synth"], default="synth")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--bn", choices=["train", "eval"], default="train")
    ap.add_argument("--eval-every", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    case = Case(args.suspect)
    path, model, spec = case.path, case.model, case.spec

    def ev(m):
        return "CA {:.1f}  ASR {:.1f}".format(*case.ev(m))

    print("suspect", ev(model), flush=True)
    student, _ = clean_and_compact(model, spec, budget_bytes=int(estimate_bytes(model) / 8),
                                   config=CCConfig(do_finetune=False, do_scale=False))
    print("truncated to 1/8", ev(student), flush=True)
    if args.data == "real":
        train = load_fashion_mnist("train")
        idx = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))[: args.n]
        images = train.subset(idx).x.float()
    else:
        images = data_for(path, model, spec, args.n, CCConfig(n_synthetic=args.n, finetune=FinetuneConfig(adv_weight=1.0)))["images"]
    s_net, t_net = input_model(student, spec), input_model(model, spec).eval()
    for p in t_net.parameters():
        p.requires_grad_(False)
    cfg, gen = FinetuneConfig(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(s_net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    s_net.train(args.bn == "train")
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = augment(images[torch.randint(0, len(images), (cfg.batch_size,), generator=gen)], cfg, gen)
        with torch.no_grad():
            t_logits = t_net(x)
        loss = kd_loss(s_net(x), t_logits, cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0:
            s_net.eval()
            print(f"step {step + 1}: {ev(student)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            s_net.train(args.bn == "train")


if __name__ == "__main__":
    main()
