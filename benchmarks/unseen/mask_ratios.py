"""The smallest-mask ratio (``scan.mask_ratio``: the smallest class's mask over the runner-up's) of every line of
``scan_seeds.py --masks`` output that prints mask sizes; for outputs written before the ratio was printed.

    python benchmarks/unseen/mask_ratios.py benchmarks/results/unseen_lowpoison_s23.txt
"""
import ast
import re
import sys

from edgeclean.scan import MASK_RATIO_THRESHOLD, mask_ratio

LINE = re.compile(r"^seed (\d+) (\S+) .* sizes (\[[^\]]*\])")

for path in sys.argv[1:]:
    for text in open(path):
        m = LINE.match(text)
        if m:
            top, ratio = mask_ratio(ast.literal_eval(m.group(3)))
            flag = "over the line" if ratio < MASK_RATIO_THRESHOLD else ""
            print(f"seed {m.group(1)} {m.group(2):60s} smallest class {top} ratio {ratio:.2f} {flag}")
