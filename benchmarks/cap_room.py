"""Where the rank cap for suspected backdoors applies: ``ranks.cap_room`` of each model (how many times 1/8 of its
factorisable convs' fp32 bytes exceeds those convs at their smallest ranks; the cap applies from
``RankConfig.suspected_min_room``), with and without the layers an int8 artifact keeps float.

    python benchmarks/cap_room.py MODEL.pt [MODEL.pt ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch import nn  # noqa: E402

from edgeclean.cc import layer_spectra  # noqa: E402
from edgeclean.export import int8_float_layers  # noqa: E402
from edgeclean.factorize import conv_layers, factorizable, tucker2  # noqa: E402
from edgeclean.load import load_suspect  # noqa: E402
from edgeclean.ranks import RankConfig, cap_room  # noqa: E402


def room(model, skip=()) -> float:
    convs = {n: m for n, m in conv_layers(model) if isinstance(m, nn.Conv2d) and factorizable(m) and n not in skip}
    spectra = layer_spectra(convs, {n: tucker2(m.weight.detach()) for n, m in convs.items()})
    return cap_room(spectra, RankConfig().suspected_fraction)


def main() -> int:
    cfg = RankConfig()
    print(f"suspected_fraction {cfg.suspected_fraction}, suspected_min_room {cfg.suspected_min_room}")
    for path in sys.argv[1:]:
        model, spec = load_suspect(path)
        fp32, int8 = room(model.eval()), room(model, int8_float_layers(model, spec))
        verdict = lambda r: "cap applies if suspected" if r >= cfg.suspected_min_room else "no cap"  # noqa: E731
        print(f"{path}: fp32 room {fp32:.2f} ({verdict(fp32)}); int8, its float layers left out, "
              f"{int8:.2f} ({verdict(int8)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
