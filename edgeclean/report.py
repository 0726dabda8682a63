"""The human-readable report: one self-contained HTML file, charts as inline SVG, no scripts.

Input is the same dict that becomes ``report.json``; nothing here computes a number.
"""

from __future__ import annotations

import html
import json


# What `scan` and `run` tell the user of a net without BatchNorm (CC_NOTES 32).
NO_BN_NOTE = ("no BatchNorm: the synthetic images come from model inversion, far less like real data than images "
              "matched to BatchNorm statistics, and the verdict rests on seven nets measured, one of them judged wrong "
              "(a patch trigger's class missed) and one clean net flagged after compression; C&C cost two such "
              "backdoored user nets 19 and 26 pt of clean accuracy, and NGF on 1% clean data left one at 95% ASR "
              "(README, 'Nets without BatchNorm')")


def without_batchnorm(scan_dict: dict | None) -> bool:
    """Whether a scan (``ScanResult.to_dict()``) had to use model inversion: the net has no BatchNorm."""
    return ((scan_dict or {}).get("synthesis") or {}).get("method") == "inversion"


def uneven_classes_note(scan_dict: dict | None) -> str:
    """Said where the softmax ratio flagged a class and no class prior was given: the ratio takes the training data's
    classes to be equally common, and a clean net trained with one class at 31 % was flagged at 12.6-17.2 (CC_NOTES 34)."""
    d = scan_dict or {}
    if not d.get("suspected") or "softmax ratio" not in d.get("basis", "") or (d.get("config") or {}).get("class_prior"):
        return ""
    return (f"the softmax ratio takes every class to be equally common in the training data; if class "
            f"{d.get('target_class')} was more common than the others, give each class's share with --class-prior "
            "(README, 'Uneven classes and two-class nets')")


def mask_skipped_note(scan_dict: dict | None) -> str:
    """Said where the scan's smallest-mask probe was asked for but skipped (its cost, or two classes)."""
    why = (scan_dict or {}).get("mask_skipped")
    return f"the smallest-mask probe was skipped: {why}" if why else ""


def scan_notes(scan_dict: dict | None) -> list[str]:
    """What the user must know to read a scan's verdict: model inversion, an uneven class balance, a skipped probe."""
    notes = [NO_BN_NOTE if without_batchnorm(scan_dict) else "", uneven_classes_note(scan_dict),
             mask_skipped_note(scan_dict)]
    return [n for n in notes if n]


GOOD, BAD, INK, MUTED, ACCENT = "#1a7f37", "#cf222e", "#1f2328", "#656d76", "#0969da"


def _e(x) -> str:
    return html.escape(str(x))


def _mb(b) -> str:
    return "–" if b is None else f"{b / 1e6:.3f} MB"


def _ms(x) -> str:
    return "–" if x is None else f"{x:.2f} ms"


def bar_chart(counts: list[int], highlight: int | None, title: str, width: int = 240, height: int = 150) -> str:
    """Class histogram as SVG bars; ``highlight`` (the suspected target) drawn in red."""
    n = max(len(counts), 1)
    top = max(max(counts, default=0), 1)
    pad_l, pad_b, pad_t = 28, 22, 32
    bw = (width - pad_l - 6) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{pad_l}" y="13" font-size="12" fill="{INK}">{_e(title)}</text>']
    for i, c in enumerate(counts):
        h = (height - pad_b - pad_t) * c / top
        x = pad_l + i * bw
        color = BAD if i == highlight else ACCENT
        parts.append(f'<rect x="{x + 2:.1f}" y="{height - pad_b - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" fill="{color}"><title>class {i}: {c}</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="{MUTED}">{i}</text>')
        if c:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - pad_b - h - 3:.1f}" font-size="9" text-anchor="middle" fill="{MUTED}">{c}</text>')
    parts.append("</svg>")
    return "".join(parts)


def spectrum_chart(values: list[float], scaled: list[int], threshold: float | None, title: str,
                   width: int = 260, height: int = 120) -> str:
    """Normalised singular values of one layer mode; scaled components as red dots, threshold dashed."""
    if not values:
        return ""
    pad_l, pad_b, pad_t = 30, 16, 18
    vmax = max(max(values), threshold or 0.0, 1e-9)
    vmin = min(min(values), 0.0)
    span = vmax - vmin or 1.0
    step = (width - pad_l - 6) / max(len(values) - 1, 1)

    def y(v):
        return pad_t + (height - pad_b - pad_t) * (1 - (v - vmin) / span)

    pts = " ".join(f"{pad_l + i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{pad_l}" y="12" font-size="11" fill="{INK}">{_e(title)}</text>',
             f'<polyline points="{pts}" fill="none" stroke="{ACCENT}" stroke-width="1.5"/>',
             f'<text x="2" y="{y(vmax) + 4:.1f}" font-size="9" fill="{MUTED}">{vmax:.2g}</text>',
             f'<text x="2" y="{y(vmin) + 4:.1f}" font-size="9" fill="{MUTED}">{vmin:.2g}</text>']
    if threshold is not None:
        parts.append(f'<line x1="{pad_l}" x2="{width - 6}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" stroke="{BAD}" stroke-dasharray="4 3"/>')
    for i in scaled:
        if 0 <= i < len(values):
            parts.append(f'<circle cx="{pad_l + i * step:.1f}" cy="{y(values[i]):.1f}" r="3.5" fill="{BAD}"><title>component {i} scaled</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(report: dict) -> tuple[str, str, str]:
    gates = report.get("gates", {})
    failed = [k for k, v in gates.items() if not v.get("passed", False)]
    before, after = report.get("scan_before") or {}, report.get("scan_after") or {}
    if failed:
        return BAD, "Gate failed: " + ", ".join(failed), "; ".join(gates[k].get("detail", "") for k in failed)
    forced = report.get("backdoor_target")
    if before.get("suspected") or forced is not None:
        why = (f"Backdoor suspected before cleaning (target class {before.get('target_class')}, score "
               f"{before.get('score', 0):.2f})" if before.get("suspected") else
               f"Cleaned against class {forced} as asked (--backdoor-target); the scan had not suspected the model "
               f"(score {before.get('score', 0):.2f})")
        line = (f"{why}; not suspected after (score {after.get('score', 0):.2f}). That is the "
                "scan's verdict on synthetic images, not proof: it has missed a partly removed blended backdoor. "
                "Test the artifact on triggered data where you have it (edgeclean evaluate).")
        return GOOD, "Cleaned and within budget", line
    return GOOD, "Clean and within budget", (
        "No backdoor suspected before or after; the model was compressed and exported. The scan can miss a backdoor: "
        "a patch trigger in a net whose BatchNorm layers are all early went unseen (CC_NOTES 20); if you suspect a "
        "class, run again with --backdoor-target CLASS.")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2328;max-width:1020px;margin:24px auto;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.verdict{border-radius:8px;padding:14px 18px;color:#fff;margin:12px 0 20px}
.verdict b{font-size:19px;display:block;margin-bottom:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:200px}
.card .k{color:#656d76;font-size:12px}.card .v{font-size:18px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.charts{display:flex;gap:14px;flex-wrap:wrap}.muted{color:#656d76;font-size:12px}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def render_html(report: dict) -> str:
    color, headline, detail = _verdict(report)
    before, after = report.get("scan_before") or {}, report.get("scan_after") or {}
    orig, lat, lat0 = report.get("original") or {}, report.get("latency_ms") or {}, (report.get("original") or {}).get("latency_ms") or {}
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeclean report: {_e(report.get('model', ''))}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>edgeclean report — {_e(report.get('model', ''))}</h1>",
           f"<div class='muted'>method <code>{_e(report.get('method'))}</code> · target <code>{_e(report.get('target'))}</code> · "
           f"precision <code>{_e(report.get('precision'))}</code> · seed {_e(report.get('seed'))} · edgeclean {_e(report.get('version'))}</div>",
           f"<div class='verdict' style='background:{color}'><b>{_e(headline)}</b>{_e(detail)}</div>"]

    emulated = " (emulated, not a real-board figure)" if lat.get("emulated") else ""
    budget = report.get("budget_bytes")
    cards = [
        ("Artifact size", f"{_mb(report.get('size_bytes'))}", f"was {_mb(orig.get('size_bytes'))} fp32" + (f" · budget {_mb(budget)}" if budget else " · no budget")),
        ("Latency p50" + emulated, _ms(lat.get("p50")), f"was {_ms(lat0.get('p50'))} (original fp32 ONNX, same target)"),
        ("MACs", f"{report.get('macs', 0):,}", f"was {orig.get('macs', 0):,}"),
        ("Parity", f"{(report.get('parity') or {}).get('max_abs_diff', float('nan')):.2e}",
         f"top-1 agreement {(report.get('parity') or {}).get('top1_agreement', float('nan')):.1%}"),
    ]
    out.append("<div class='cards'>" + "".join(
        f"<div class='card'><div class='k'>{_e(k)}</div><div class='v'>{_e(v)}</div><div class='muted'>{_e(s)}</div></div>"
        for k, v, s in cards) + "</div>")

    out.append("<h2>Scan: predictions on synthetic images, before and after</h2>")
    notes = scan_notes(before)
    if notes:
        out.extend(f"<p><b>{_e(n)}.</b></p>" for n in notes)
    else:
        out.append("<p class='muted'>Synthetic images match the model's BatchNorm statistics, which a dirty-label "
                   "backdoor skews towards its target class; the cleaning distils on them and reverse-engineers its "
                   "trigger on them.</p>")
    prior = ((before or {}).get("config") or {}).get("class_prior")
    if prior:
        out.append("<p class='muted'>Class prior given (each class's share of the training data): "
                   + _e(", ".join(f"{p:.3f}" for p in prior)) + "; each class was judged by how far its share of the "
                   "synthetic images exceeds it.</p>")
    out.append("<p class='muted'>Red: the class the scan points at.</p><div class='charts'>")
    for label, s in (("before", before), ("after", after)):
        verdict = "SUSPECTED" if s.get("suspected") else "inconclusive" if s.get("inconclusive") else "not suspected"
        target = s.get("target_class")
        out.append(bar_chart(s.get("clean_histogram") or [], target,
                             f"{label}: {verdict} ({s.get('score', 0):.2f})"))
        out.append(bar_chart(s.get("histogram") or [], target, f"{label}: adversarial"))
    out.append("</div>")

    patch = (report.get("cc") or {}).get("patch")
    if patch:
        out.append("<h2>Teacher patch (backdoor unlearning)</h2>")
        out.append(f"<p>Triggers reverse-engineered on synthetic images for the suspected target class; before "
                   f"distilling, the units they excite most were silenced or the teacher was fine-tuned to ignore them "
                   f"(plan <code>{_e(patch.get('plan'))}</code>, chosen among the candidates below by: triggers "
                   f"silenced, then removed where they arise (BatchNorm channels alone, or unlearning), then fewest "
                   f"synthetic predictions changed plus triggered images still moved to another class): "
                   f"<b>{len(patch.get('channels', []))} of {patch.get('n_channels', 0)}</b> BatchNorm channels, then "
                   f"<b>{len(patch.get('units', []))} of {patch.get('n_inputs')}</b> inputs of the head "
                   f"<code>{_e(patch.get('head'))}</code>. "
                   f"Share of held-out synthetic images the triggers send to the target: "
                   f"<b>{patch.get('success_before', 0):.0%} → {patch.get('success_after', 0):.0%}</b>"
                   + (f"; on the cleaned (distilled) model: <b>{patch['student_success']:.0%}</b> (a high figure "
                      "means distillation taught these triggers back; a low one does not prove the real trigger is "
                      "gone: they only stand in for it)" if patch.get("student_success") is not None else "") + ".</p>")
        # size: a mask's area (L1, pixels), an additive trigger's L-inf (raw pixel units), a warp's largest shift (pixels)
        out.append(_table(["trigger", "size (mask: area px; additive: max |delta|; warp: max shift px)",
                           "success (fit)", "success (held out)", "used"],
                          [[t.get("kind"), t.get("size"), t.get("success_fit"), t.get("success_held_out"),
                            "yes" if t.get("used") else "no"] for t in patch.get("triggers", [])]))
        out.append(_table(["plan", "BN channels", "head inputs", "success after", "predictions unchanged",
                           "triggered images moved (any class)"],
                          [[c.get("plan"), c.get("channels"), c.get("units"), c.get("success_after"), c.get("unchanged"),
                            c.get("moved", "–")] for c in patch.get("candidates", [])]))

    distil = (report.get("cc") or {}).get("distillation")
    if distil and distil.get("steps"):
        out.append(f"<h2>Distillation</h2><p>{distil['steps']} steps on the synthetic images; the student "
                   + (f"also matched the teacher's outputs at <b>{distil['feature_layers']}</b> BatchNorm layers."
                      if distil.get("feature_layers") else
                      "matched the teacher's outputs only (no BatchNorm feature matching: it is off behind a patched "
                      "teacher, whose features carry the patch's cuts)." if distil.get("teacher_patched") else
                      "matched the teacher's outputs only.") + "</p>")

    spectra = report.get("spectra") or []
    if spectra:
        out.append("<h2>Normalised singular values (Tucker-2 modes)</h2>")
        out.append(f"<p class='muted'>Per layer and mode, singular values normalised so one global threshold "
                   f"(dashed, τ = {_e(report.get('tau_scale'))}) fits every layer; red dots are the components that were scaled down.</p>")
        out.append("<div class='charts'>")
        for s in spectra:
            out.append(spectrum_chart(s.get("values", []), s.get("scaled", []), s.get("threshold"), f"{s.get('layer')} · {s.get('mode')}"))
        out.append("</div>")

    layers = report.get("layers") or []
    if layers:
        out.append("<h2>Per-layer ranks</h2>")
        rows = [[l.get("name"), "x".join(map(str, l.get("original_shape", []))),
                 "dense" if not l.get("ranks") else f"{l['ranks'][0]} / {l['ranks'][1]}",
                 sum(len(v) for v in (l.get("scaled_components") or {}).values()), l.get("note", "")] for l in layers]
        out.append(_table(["layer", "original shape", "ranks (in / out)", "scaled comps", "note"], rows))

    stages = report.get("stages") or {}
    if stages:
        out.append("<h2>Stage timings</h2>")
        total = sum(stages.values())
        out.append(_table(["stage", "seconds", "share"], [[k, f"{v:.1f}", f"{v / total:.0%}" if total else "–"] for k, v in stages.items()]
                          + [["total", f"{total:.1f}", ""]]))

    out.append("<h2>Raw report</h2><details><summary class='muted'>report.json</summary><pre style='font-size:11px;overflow:auto'>"
               + _e(json.dumps({k: v for k, v in report.items() if k != "spectra"}, indent=1)) + "</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)
