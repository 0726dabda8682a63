import sys, glob, torch
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))))
from pathlib import Path
from edgeclean.load import input_model, load_suspect, read_card
from edgeclean.unlearn import reverse_trigger, success_rate, PatchConfig
torch.set_num_threads(1)
for s in sys.argv[1:]:
    path = Path(s); card = read_card(path); tgt = card.get("target") or 0
    model, spec = load_suspect(path); model.eval(); T = input_model(model, spec)
    f = sorted(glob.glob(f".cache/cc_synth/{path.stem}_*_None_None_0.pt"))[-1]
    im = torch.load(f, weights_only=True)["images"]
    for c in [tgt, (tgt + 1) % 10]:
        row = []
        for kind, eps in [("mask", 0), ("additive", 0.05), ("additive", 0.1), ("additive", 0.2)]:
            t = reverse_trigger(T, im[:128], c, kind, PatchConfig(eps=eps or 0.2, steps=150))
            row.append(f"{kind}{eps or ''}: fit {t.success:.2f} held {success_rate(T, im[128:256], t):.2f} size {t.size():.2f}")
        print(path.stem, card.get("attack"), "class", c, "(target)" if c == tgt else "", " | ".join(row), flush=True)
