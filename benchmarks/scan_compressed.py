"""Compressed / cleaned models for the scan's false-positive check (the scan runs after cleaning
in ``edgeclean run``).

    /work/venv/bin/python benchmarks/scan_compressed.py          # writes benchmarks/suspects/compressed/
    /work/venv/bin/python benchmarks/scan_evidence.py benchmarks/suspects/compressed/*.pt \
        --seed S --out benchmarks/results/scan_evidence_compressed.json   # S = 0, 1, 2

Each suite model given (default: the two clean ones and the demo suspect) is put through
``clean_and_compact`` at 1/8 of its fp32 size, once without fine-tuning (rank scaling + truncation
alone: the lowest-CA case) and once with the default fine-tuning. The result is saved with a card
(spec with its factorised ranks, CA on 2000 Fashion-MNIST test images, ASR when backdoored).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from edgeclean.cc import CCConfig, clean_and_compact
from edgeclean.load import load_suspect

ROOT = Path(__file__).resolve().parent
DEFAULT = ["suspects/resnet18_clean.pt", "suspects/vgg11_clean.pt", "../models/demo_badnets_resnet18.pt"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--out-dir", default=str(ROOT / "suspects" / "compressed"))
    ap.add_argument("--variants", nargs="*", default=["noft", "ft"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from edgeclean.data import load_dataset
    from edgeclean.metrics import evaluate

    test = load_dataset("fashion-mnist", split="test")
    from dataclasses import replace

    test = replace(test, x=test.x[:2000], y=test.y[:2000])
    for p in args.paths or [ROOT / d for d in DEFAULT]:
        path = Path(p).resolve()
        card = json.loads(path.with_suffix(".json").read_text())
        for variant in args.variants:
            dst = out_dir / f"{path.stem}_cc8_{variant}.pt"
            if dst.exists():
                continue
            model, spec = load_suspect(path)
            budget = card["size_bytes_fp32"] // 8 if "size_bytes_fp32" in card else sum(
                t.numel() * 4 for t in model.state_dict().values()) // 8
            t = time.perf_counter()
            cfg = CCConfig(do_finetune=(variant == "ft"))
            cleaned, report = clean_and_compact(model, spec, budget_bytes=budget, config=cfg)
            seconds = time.perf_counter() - t
            from edgeclean.load import ModelSpec, input_model

            attack = card.get("attack") if card.get("attack") not in (None, "none") else None
            m = evaluate(input_model(cleaned.eval(), ModelSpec.from_dict(report.spec)), test, attack=attack,
                         target=card.get("target"), attack_params=card.get("attack_params"))
            torch.save(cleaned.state_dict(), dst)
            new_card = {"spec": report.spec, "attack": card.get("attack", "none"), "target": card.get("target"),
                        "clean_label": card.get("clean_label", False), "source": str(path.name), "variant": variant,
                        "budget_bytes": budget, "cc_seconds": round(seconds, 1), "ca": m.get("ca"), "asr": m.get("asr"),
                        "note": "ca/asr on the first 2000 Fashion-MNIST test images"}
            dst.with_suffix(".json").write_text(json.dumps(new_card, indent=1))
            print(f"{dst.name}: CA {m.get('ca')} ASR {m.get('asr')}  {seconds:.0f}s  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
