"""What the teacher patch of an ``edgeclean run`` did, from its report.json: the class cleaned against, the plan,
and each reverse-engineered trigger's size (mask: pixels; additive: L-inf; warp: pixels) and held-out success.

    python benchmarks/unseen/report_patch.py export/imb_clean/report.json export/imb_diag_t3/report.json
"""
import json
import sys


def main(paths) -> None:
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        patch = (report.get("cc") or {}).get("patch")
        if not patch:
            print(f"{path}: no patch")
            continue
        target = report.get("backdoor_target", None)
        target = report["scan_before"]["target_class"] if target is None else target
        triggers = ", ".join(f"{t['kind']} {t['size']:g} (held-out success {t['success_held_out']:g})"
                             for t in patch["triggers"])
        print(f"{path}: class {target}, plan {patch['plan']}; {triggers}")


if __name__ == "__main__":
    main(sys.argv[1:])
