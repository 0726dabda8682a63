"""How long does ``scan`` take on a full-width ResNet-18? (Target: under 2 minutes on 2 CPU cores.)

    /work/venv/bin/python benchmarks/bench_scan.py                 # 1x28x28 (Fashion-MNIST shape)
    /work/venv/bin/python benchmarks/bench_scan.py --shape 3x32x32 # CIFAR shape
    /work/venv/bin/python benchmarks/bench_scan.py --iterations 30 60 120   # synthesis trade-off

No full-width ResNet-18 is trained here (that takes hours on this machine), so the network is
freshly initialised and its BatchNorm running statistics are set from 512 Fashion-MNIST training
images (a cumulative average over forward passes in train mode) — the work the scan does is the
same as for a trained model. The machine is shared: the load average is printed with the time.

Measured 2026-11-21 on the shared 2-core machine while 5+ other jobs ran (load average 9-17),
with the earlier defaults (n=128, 60 iterations, PGD 10 steps, no universal probe):
    --threads 1                        735.9 s (synth 645.3, PGD 90.6)  OVER
    (defaults, 2 threads, load 0.7 -> 4.6)  471.9 s (synth 418.8, probe 53.2)  OVER
2026-11-22, others running, n=128, 30 synthesis iterations, PGD 5 steps, universal probe 10
classes x 16 images x 8 steps (3840 + 640 + 1280 image forward/backward passes):
    --threads 1, load 5.0 -> 2.6       207.2 s (synth 165.9, probe 15.0, universal 26.3)  OVER
    --threads 1, load 2.4 -> 4.8       172.4 s (synth 115.2, probe 19.5, universal 37.7)  OVER
    (2 threads), load 3.5 -> 4.1       307.1 s (synth 245.5, probe 28.2, universal 33.4)  OVER
    --threads 1, load 2.8 -> 3.0       132.7 s (synth 91.0, probe 15.1, universal 26.5)   OVER
Current defaults (universal probe 5 steps: 3840 + 640 + 800 passes):
    --threads 1, load 3.8 -> 4.0       125.2 s (synth 93.4, probe 15.1, universal 16.8)   OVER by 5 s
    --threads 1, load 3.6 -> 3.1       139.0 s (synth 106.6, probe 14.5, universal 17.9)  OVER
The load never fell below 2.4 for a whole run. One forward+backward image pass of this network
costs ~21 ms on one uncontended thread (measured in isolation, batch 16-64, fp32; bf16 autocast
and channels_last were no faster on one thread: 19.5-31 ms), so the defaults need ~110 s on one
free core: just under 2 minutes, not yet measured so (the machine was never that free). Fewer synthesis iterations would save the
most (20 instead of 30: -27 s), but at 20 the suite lost a detection (vgg11_badnets, seed 1:
results/scan_calibration_it20_seed1.json), so the defaults stay at 30.
Measured 2026-11-22 01:27 UTC on the idle machine (load 0.6 -> 1.6), defaults, 2 torch threads:
    (defaults)                         67.7 s (synth 50.7, probe 7.9, universal 9.1)      UNDER 2 min
With the grating probe (SIG evidence; default since 2026-11-22 03:00), loaded by the others:
    (2 threads), 48 screening images, load 3.2 -> 2.8   491.7 s (synth 381.0, probe 35.5, universal 26.1,
                                       grating ~49)   OVER (2 threads on a loaded machine: synthesis alone 7.5x idle)
    --threads 1, 48 screening images, load 3.3 -> 2.8   245.6 s (synth 113.6, probe 20.0, universal 21.1, grating 90.8)  OVER
    --threads 1, 24 images + top-3 confirmation (defaults), load 1.9 -> 2.1
                                       147.3 s (synth 86.4, probe 14.8, universal 17.3, grating 28.9)  OVER
    (defaults, 2 threads), load 2.5 -> 3.2
                                       384.1 s (synth 312.3, probe 34.6, universal 19.5, grating 17.6)  OVER
The grating probe took 17.6 s with 2 threads even on that loaded machine (28.9 s on 1 thread);
the idle 67.7 s plus at most that is ~85 s, under 2 minutes, but the idle machine has not been
measured with it (the load never fell below 1.6 in this session).
Measured 2026-11-22 03:32 UTC on the idle machine (load 0.7 -> 1.7), defaults with the grating probe, 2 threads:
    (defaults)                         90.2 s (synth 52.3, probe 8.1, universal 9.4, grating 20.4)  UNDER 2 min
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch

from edgeclean.load import ModelSpec, parse_shape
from edgeclean.scan import ScanConfig, scan
from edgeclean.zoo import create_model


def calibrated_resnet18(shape) -> tuple[torch.nn.Module, ModelSpec]:
    c, h, w = shape
    spec = ModelSpec(arch="resnet18", num_classes=10, input_shape=shape, mean=(0.286,) * c, std=(0.353,) * c)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=c, width=1.0)
    try:
        from edgeclean.data import load_dataset

        x = load_dataset("fashion-mnist", split="train").x[:512]
    except Exception:  # noqa: BLE001 - no data set installed: noise still gives the BN layers statistics
        x = torch.rand(512, 1, 28, 28)
    x = torch.nn.functional.interpolate(x, size=(h, w)).repeat(1, c, 1, 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 128):
            model((x[i:i + 128] - 0.286) / 0.353)
    return model.eval(), spec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1x28x28")
    ap.add_argument("--iterations", type=int, nargs="*", default=[None], help="synthesis iterations to time")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the scan (ScanConfig.threads)")
    ap.add_argument("--steps", type=int, default=None, help="PGD steps (ScanConfig.probe.steps)")
    ap.add_argument("--uap-steps", type=int, default=None, help="universal perturbation steps")
    ap.add_argument("--uap-images", type=int, default=None, help="universal perturbation images")
    args = ap.parse_args()
    model, spec = calibrated_resnet18(parse_shape(args.shape))
    print(f"resnet18 width 1.0, input {args.shape}, {sum(p.numel() for p in model.parameters()):,} params, "
          f"torch threads {args.threads or torch.get_num_threads()}, cpus {os.cpu_count()}")
    for iters in args.iterations:
        cfg = ScanConfig(threads=args.threads)
        if iters is not None:
            cfg.synth = replace(cfg.synth, iterations=iters)
        if args.n:
            cfg.n = args.n
        if args.steps:
            cfg.probe = replace(cfg.probe, steps=args.steps)
        if args.uap_steps or args.uap_images:
            cfg.universal = replace(cfg.universal, steps=args.uap_steps or cfg.universal.steps,
                                    images=args.uap_images or cfg.universal.images)
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        r = scan(model, spec, cfg)
        total = time.perf_counter() - t
        print(f"n={cfg.n} synth_iters={cfg.synth.iterations} pgd={cfg.probe.norm}/{cfg.probe.eps}/{cfg.probe.steps} steps: "
              f"scan {total:.1f}s (synth {r.timings['synth_s']:.1f}s, probe {r.timings['probe_s']:.1f}s, "
              f"universal {r.timings.get('universal_s', 0):.1f}s, grating {r.timings.get('grating_s', 0):.1f}s), "
              f"BN loss {r.synthesis['bn_loss_start']:.3f} -> {r.synthesis['bn_loss_end']:.3f}, "
              f"load avg {load0:.1f} -> {os.getloadavg()[0]:.1f}  {'UNDER' if total < 120 else 'OVER'} 2 min")


if __name__ == "__main__":
    main()
