"""The ``edgeclean`` command: a thin click layer over the Python API.

Every subcommand turns ``UserError`` into one line on stderr and exit code 2, and ``GateFailed``
into exit code 1; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .errors import GateFailed, UserError


def handle_errors(fn):
    """Map the project's exceptions onto exit codes; one line each, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except GateFailed as exc:
            click.echo(f"gate failed: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; no artifact written", err=True)
            sys.exit(130)

    return wrapper


# export.with_int8_activations' modes, shared by `export` and `run`
int8_activations_option = click.option(
    "--int8-activations", type=click.Choice(["auto", "int8", "float"]), default="auto", show_default=True,
    help="int8 only: auto = static int8, or int8 weights with float activations where static int8 fails the agreement "
         "gate; int8 = static int8 or nothing (runtimes needing int8 kernels); float = int8 weights only.")


# scan.with_masks' modes, shared by `scan` and `run`
masks_option = click.option(
    "--masks", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
    help="The scan's smallest-mask probe (Neural Cleanse), which sees patch triggers in few training images: auto = "
         "skipped on nets where it would be slow (the scan says so), on = always, off = never.")


def model_options(fn):
    """The loading options every command that reads a checkpoint shares."""
    opts = [
        click.option("--arch", default=None, help="Zoo name, package.module:factory or file.py:factory (default: detect)."),
        click.option("--input-shape", default=None, help="CxHxW in the model's input space (default: card, else Cx32x32)."),
        click.option("--mean", default=None, help="Per-channel mean the model expects, e.g. 0.5,0.5,0.5 (default 0)."),
        click.option("--std", default=None, help="Per-channel std the model expects (default 1)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


class_prior_option = click.option(
    "--class-prior", default=None,
    help="Each class's share of the training data, e.g. 3,1,1,1,1,1,1,1,1,1 (default: card, else even). The scan "
         "takes it out of its synthetic images' class balance, so a common class does not look like a target.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeclean")
def main():
    """Remove backdoors from untrusted CNNs without data, compress them to a byte budget, ship ONNX."""


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@handle_errors
def inspect_cmd(model, arch, input_shape, mean, std, as_json):
    """Say what MODEL is: architecture, parameters, MACs, size and its conv layers."""
    from .load import load_suspect
    from .summary import summarize

    net, spec = load_suspect(model, arch=arch, input_shape=input_shape, mean=mean, std=std)
    info = summarize(net, spec)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    from .ui import console as make_console

    console = make_console()
    kw = ", ".join(f"{k}={v}" for k, v in info["arch_kwargs"].items())
    console.print(f"[bold]{info['arch']}[/bold]({kw})  layout: {info['layout']}")
    console.print(
        f"input {'x'.join(map(str, info['input_shape']))}  classes {info['num_classes']}  "
        f"params {info['params']:,}  MACs {info['macs']:,}  fp32 {info['fp32_bytes'] / 1e6:.2f} MB"
    )
    table = Table("layer", "weight shape", "kernel", "stride", "groups", "params", "MACs")
    for r in info["layers"]:
        if r["kind"] != "conv":
            continue
        table.add_row(r["name"], "x".join(map(str, r["shape"])), "x".join(map(str, r["kernel"])),
                      "x".join(map(str, r["stride"])), str(r["groups"]), f"{r['params']:,}", f"{r['macs']:,}")
    console.print(table)


# --------------------------------------------------------------------------- suspects / evaluate (harness)


@main.group("suspects")
def suspects_group():
    """Train backdoored (or clean) suspect models for the evaluation harness."""


@suspects_group.command("make")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="fashion-mnist, cifar10:DIR, npz:PATH or folder:DIR.")
@click.option("--attack", default="badnets", show_default=True, help="badnets, blended, sig, wanet, ftrojan or none (clean model).")
@click.option("--attack-param", "attack_param", multiple=True, metavar="KEY=VALUE", help="Override a trigger parameter, e.g. alpha=0.3 (repeatable).")
@click.option("--arch", default="resnet18", show_default=True, help="Zoo architecture.")
@click.option("--width", default=0.25, show_default=True, type=float, help="Width multiplier of the zoo model.")
@click.option("--stem", default="imagenet", show_default=True, help="ResNet stem: imagenet (7x7/2 + max-pool, fast) or cifar.")
@click.option("--epochs", default=4, show_default=True, type=int)
@click.option("--target", default=0, show_default=True, type=int, help="Target class of the all-to-one backdoor.")
@click.option("--poison-ratio", default=0.1, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--lr", default=0.05, show_default=True, type=float)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--bf16", is_flag=True, help="bf16 autocast on the CPU (faster on CPUs with bf16 units).")
@click.option("--threads", default=None, type=int, help="torch CPU threads.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the state_dict (.pt); the card goes beside it (.json).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def suspects_make(dataset, attack, attack_param, arch, width, stem, epochs, target, poison_ratio, seed, lr, batch_size, bf16, threads, out, quiet):
    """Train a (backdoored) model on the CPU; write OUT and its JSON card (dataset, attack, CA, ASR, ...)."""
    from .attacks import parse_attack_params
    from .train import TrainConfig, train_suspect

    if epochs < 1:
        raise UserError("--epochs must be at least 1")
    kwargs = {"width": width}
    if arch in ("resnet18", "resnet34"):
        kwargs["stem"] = stem
    cfg = TrainConfig(dataset=dataset, arch=arch, arch_kwargs=kwargs, attack=attack,
                      attack_params=parse_attack_params(attack_param), target=target, poison_ratio=poison_ratio,
                      epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, bf16=bf16, threads=threads)
    _, card = train_suspect(cfg, out=out, quiet=quiet, log=lambda s: click.echo(s, err=True))
    asr = f"  ASR {card['asr'] * 100:.2f}%" if card["asr"] is not None else ""
    click.echo(f"wrote {out} (+ card): CA {card['ca'] * 100:.2f}%{asr}  {card['train_seconds']:.0f}s")


@main.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--dataset", default="fashion-mnist", show_default=True, help="Test split of fashion-mnist, cifar10:DIR, npz:PATH or folder:DIR.")
@click.option("--attack", default=None, help="Trigger to measure ASR with (default: from the model's card; 'none' for CA only).")
@click.option("--attack-target", default=None, type=int, help="Target class of the backdoor (default: from the card).")
@click.option("--attack-param", "attack_param", multiple=True, metavar="KEY=VALUE", help="Trigger parameter override (repeatable).")
@click.option("--card", "card_path", default=None, type=click.Path(dir_okay=False), help="Card to read attack/target/trigger from (default: MODEL's, else the reference's).")
@click.option("--reference", default=None, type=click.Path(dir_okay=False), help="The model before the defence: adds its numbers and DER.")
@click.option("--limit", default=None, type=int, help="Evaluate on the first N test images only.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@handle_errors
def evaluate_cmd(model, arch, input_shape, mean, std, dataset, attack, attack_target, attack_param, card_path, reference, limit, as_json):
    """CA, ASR (test images whose label != target), R-Acc and, with --reference, DER of MODEL (.pt or .onnx)."""
    from .metrics import evaluate_files

    result = evaluate_files(model, dataset=dataset, attack=attack, target=attack_target, attack_param=attack_param,
                            card=card_path, reference=reference, limit=limit,
                            arch=arch, input_shape=input_shape, mean=mean, std=std)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    pct = lambda v: "-" if v is None else f"{v * 100:.2f}%"  # noqa: E731
    line = f"{result['model']}  CA {pct(result['ca'])}"
    if "asr" in result:
        line += f"  ASR {pct(result['asr'])}  R-Acc {pct(result['racc'])}  ({result['attack']} -> {result['target']})"
    click.echo(line)
    if "redirect" in result:
        r = result["redirect"]
        click.echo(f"most redirected: class {r['class']} gets {pct(r['rate'])} of the triggered images "
                   f"({pct(r['clean_rate'])} of them untriggered){'  <- the trigger moves images there' if r['rate'] - r['clean_rate'] > 0.1 else ''}")
    if "reference" in result:
        ref = result["reference"]
        rl = f"{result['reference_model']}  CA {pct(ref['ca'])}"
        if "asr" in ref:
            rl += f"  ASR {pct(ref['asr'])}  R-Acc {pct(ref['racc'])}"
        click.echo(rl)
        if "der" in result:
            click.echo(f"DER {result['der'] * 100:.2f}%")


# --------------------------------------------------------------------------- scan


@main.command("scan")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--n", "n", type=click.IntRange(2, 100000), default=None, help="Synthetic images (default 256).")
@click.option("--iterations", type=click.IntRange(1, 100000), default=None, help="Synthesis iterations per batch.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="PGD ball (default linf).")
@click.option("--eps", type=click.FloatRange(0, None, min_open=True), default=None, help="PGD radius in [0,1] pixel units.")
@click.option("--steps", type=click.IntRange(1, 10000), default=None, help="PGD steps.")
@click.option("--threshold", type=float, default=None, help="Score above which the model is suspected.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Torch threads (default: torch's).")
@class_prior_option
@masks_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@handle_errors
def scan_cmd(model, arch, input_shape, mean, std, n, iterations, norm, eps, steps, threshold, seed, threads,
             class_prior, masks, as_json):
    """Say whether MODEL looks backdoored and which class it targets, using no data.

    Exit code 0: looks clean; 1: suspected, or inconclusive (nothing to judge: as run's backdoor gate); 2: bad input.
    """
    from dataclasses import replace

    from .load import load_suspect
    from .scan import ScanConfig, scan, with_masks

    net, spec = load_suspect(model, arch=arch, input_shape=input_shape, mean=mean, std=std, class_prior=class_prior)
    cfg = with_masks(ScanConfig(progress=not as_json, seed=seed, threads=threads), masks)
    if iterations:
        cfg.synth = replace(cfg.synth, iterations=iterations)
    cfg.probe = replace(cfg.probe, **{k: v for k, v in (("norm", norm), ("eps", eps), ("steps", steps)) if v is not None})
    if n is not None:
        cfg.n = n
    if threshold is not None:
        cfg.threshold = threshold
    result = scan(net, spec, cfg)
    if as_json:
        click.echo(json.dumps({"model": model, **result.to_dict()}, indent=2))
    else:
        from rich.table import Table

        from .ui import console as make_console

        console = make_console()
        verdict = ("[bold red]SUSPECTED backdoor[/bold red]" if result.suspected else
                   "[bold yellow]inconclusive[/bold yellow]" if result.inconclusive else "[bold green]looks clean[/bold green]")
        console.print(f"{model}: {verdict}  target class {result.target_class}  "
                      f"score {result.score:.2f} (threshold {result.threshold:.2f}; {result.basis})")
        if not result.suspected:
            console.print("the scan can miss a backdoor (a warp or stripe trigger poisoned into few training images; a "
                          "patch in a net too large for the smallest-mask probe); if you suspect a class: edgeclean run "
                          "MODEL --backdoor-target CLASS", highlight=False)
        if result.softmax_ratio is not None:
            gap = ("" if result.universal_gap is None else
                   f"; universal perturbation gap {result.universal_gap:.2f} (class {result.universal_target})")
            if result.grating_gap is not None:
                pat = result.grating_pattern
                gap += (f"; grating gap {result.grating_gap:.2f} (class {result.grating_target}"
                        + (f", {pat[1]} cycles along {pat[0]}" if pat else "") + ")")
            prior = "" if spec.class_prior is None else ", class prior taken out"
            console.print(f"evidence: softmax ratio {result.softmax_ratio:.2f} (class {result.softmax_target}{prior}){gap}")
        if result.mask_sizes is not None:
            sizes = sorted(result.mask_sizes)
            console.print(f"smallest mask: class {result.mask_target}, {sizes[0]:.0f} px, {result.mask_ratio:.2f} of the "
                          f"next class's {sizes[1]:.0f} px (line {cfg.mask_ratio_threshold:.2f}; median "
                          f"{sizes[len(sizes) // 2]:.0f} px)", highlight=False)
        s = result.synthesis
        console.print(f"synthetic data: {cfg.n} images ({s['method']}), BN loss {s['bn_loss_start']:.3f} -> "
                      f"{s['bn_loss_end']:.3f}, prediction spread {s['prediction_spread']:.2f}; "
                      f"flip rate {result.flip_rate:.2f}; {result.timings['total_s']:.1f}s")
        from .report import scan_notes

        for note in scan_notes(result.to_dict()):
            console.print(note, highlight=False)
        console.print(f"not used for the verdict: flips pile up in class {result.flip_target} (index {result.flip_index:.2f})"
                      + (f"; smallest trigger mask for class {result.trigger_target} (index {result.trigger_index:.2f})"
                         if result.trigger_index is not None else ""))
        table = Table("class", "synthetic preds", "adversarial preds", "flips into", "first flips", "mean flip norm")
        for row, adv in zip(result.class_stats, result.histogram):
            norm_text = "-" if row["mean_flip_norm"] is None else f"{row['mean_flip_norm']:.3f}"
            table.add_row(str(row["class"]), str(row["clean"]), str(adv), str(row["flips_into"]),
                          str(row["first_flips_into"]), norm_text)
        console.print(table)
    sys.exit(1 if result.suspected or result.inconclusive else 0)


# --------------------------------------------------------------------------- export / bench


def _read_images(path: str):
    """An .npy / .npz (first array) of N x C x H x W images in [0, 1]: calibration for int8."""
    import numpy as np

    try:
        data = np.load(path)
        if hasattr(data, "files"):
            data = data[data.files[0]]
    except (OSError, ValueError) as exc:
        raise UserError(f"--calib {path} is not a readable .npy/.npz ({exc}); save images with numpy.save") from None
    return data


@main.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Output .onnx (default export/<stem>/model.onnx).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@click.option("--calib", default=None, type=click.Path(dir_okay=False),
              help="int8 calibration images (.npy/.npz, N x C x H x W in [0,1]); default: synthetic images, no data.")
@int8_activations_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@handle_errors
def export_cmd(model, arch, input_shape, mean, std, out, precision, calib, int8_activations, as_json):
    """Export MODEL to ONNX (raw [0,1] inputs, BN folded, opset 17) and check parity with PyTorch."""
    import os
    import tempfile
    from pathlib import Path

    from .export import ExportConfig, export, with_int8_activations
    from .load import load_suspect

    net, spec = load_suspect(model, arch=arch, input_shape=input_shape, mean=mean, std=std)
    out = Path(out) if out else Path("export") / Path(model).stem / "model.onnx"
    info = export(net, spec, out, precision=precision, calib=_read_images(calib) if calib else None,
                  config=with_int8_activations(ExportConfig(), int8_activations))
    # A card beside the artifact, like the one beside a checkpoint: what the graph expects.
    card = out.with_suffix(".json")
    fd, tmp = tempfile.mkstemp(prefix=f".{card.stem}.", suffix=".json", dir=card.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"spec": spec.to_dict(), "export": info}, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, card)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    par = info["parity"]
    click.echo(f"wrote {info['path']} ({info['bytes'] / 1e6:.3f} MB, {precision}, opset {info['graph']['opset']}, "
               f"IR {info['graph']['ir_version']}, {info['graph']['nodes']} nodes)")
    click.echo(f"parity vs PyTorch: max abs diff {par['max_abs_diff']:.2e} (tolerance {par['tolerance']:.1e}), "
               f"top-1 agreement {par['top1_agreement']:.1%} on {par['samples']} seeded inputs")
    click.echo(f"BatchNorm: {info['bn_folded_in_torch']} of {info['bn_total']} folded into convs; "
               f"{info['bn_left_in_graph']} left (not after a conv)")
    if precision == "int8":
        for name, a in info["int8_agreement"].items():
            gate = "gate" if a.get("gated") else "info only"
            click.echo(f"int8 vs fp32 top-1 agreement on {name} ({a['samples']}, {gate}): {a['top1_agreement']:.1%}")
        click.echo(f"sizes: fp32 {info['fp32_bytes'] / 1e6:.3f} MB, int8 {info['int8_bytes'] / 1e6:.3f} MB "
                   f"(x{info['int8_size_ratio']:.3f}); calibration: {info['calibration']['source']}; "
                   f"{info['int8_weight_bits']}-bit weights" + (" (this CPU's int8 kernels saturate without VNNI)"
                                                                 if info["int8_weight_bits"] == 7 else ""))
        if info["int8_activations"] == "float":
            from .export import static_int8_shortfall

            why = static_int8_shortfall(info)
            click.echo("activations: float (int8 weights only, no int8 kernels)" + (f"; static int8 {why}" if why else "")
                       + "; onnxruntime runs it at fp32 speed with the session config session.disable_quant_qdq=1")
    if info.get("ort_path"):
        click.echo(f"ORT-format copy: {info['ort_path']}")


@main.command("bench")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["host", "arm64"]), default="host", show_default=True,
              help="arm64 on an x86 host runs the aarch64 onnxruntime under qemu-user (emulated latency).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: onnxruntime's).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed runs (default 100; 20 when emulated).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed runs first (default 10; 3 when emulated).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@click.option("--setup", is_flag=True, help="Build the cached arm64 emulation root first (once, ~2 minutes).")
@click.option("--force", is_flag=True, help="With --setup: rebuild the arm64 root.")
@click.option("--session-config", multiple=True, metavar="KEY=VALUE",
              help="onnxruntime session config entry, repeatable; e.g. session.disable_quant_qdq=1 runs a weights-only "
                   "int8 file at fp32 speed.")
@handle_errors
def bench_cmd(model, target, threads, runs, warmup, as_json, setup, force, session_config):
    """Measure MODEL.onnx with onnxruntime: session time, first run, p50/p90/p99 latency, peak RSS."""
    from .bench import bench, parse_session_config

    config = parse_session_config(session_config)

    if setup:
        from . import arm64

        info = arm64.setup(force=force, log=lambda line: click.echo(line, err=True))
        click.echo(f"arm64 root ready at {arm64.root_dir()} ({json.dumps(info.get('seconds', {}))})", err=True)
        if model is None:
            return
    if model is None:
        raise UserError("give MODEL.onnx to benchmark (or only --setup to build the arm64 root)")
    info = bench(model, target=target, threads=threads, runs=runs, warmup=warmup, session_config=config)
    compare = info.get("host_compare")
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        lat = info["latency_ms"]
        cpu = info["cpu"]
        emulated = "  [EMULATED under qemu-user: not a board measurement]" if info["emulated"] else ""
        click.echo(f"{info['model']}  {info['file_bytes'] / 1e6:.3f} MB  target {info['target']}{emulated}")
        click.echo(f"onnxruntime {info['onnxruntime']}, threads {info['threads']}, CPU {cpu['model']} "
                   f"({cpu['machine']}, {cpu['logical_cpus']} logical; {' '.join(cpu['simd']) or 'no SIMD flags'})")
        click.echo(f"session {info['session_create_ms']:.1f} ms, first inference {info['first_inference_ms']:.2f} ms")
        click.echo(f"latency over {info['runs']} runs after {info['warmup']} warm-up (ms): p50 {lat['p50']:.3f}  "
                   f"p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  mean {lat['mean']:.3f}  std {lat['std']:.3f}")
        click.echo(f"peak RSS {info['peak_rss_mb']:.1f} MB")
        if "ops_ran" in info:
            ops = ", ".join(f"{k} x{v}" for k, v in info["ops_ran"]["op_counts"].items())
            click.echo(f"ops ran: {ops}")
        if compare:
            click.echo(f"vs host run on the same inputs: max abs diff {compare['max_abs_diff']:.2e}, "
                       f"top-1 {'equal' if compare['top1_equal'] else 'DIFFERENT'}")
    if compare and not compare["top1_equal"]:
        raise GateFailed("the arm64 run predicts a different class than the host run on the same input")

# --------------------------------------------------------------------------- run


def _said(scan: dict, suspected: str, otherwise: str) -> str:
    """A scan's verdict in a word or two: an inconclusive scan is neither suspected nor clean."""
    return suspected if scan["suspected"] else "inconclusive" if scan.get("inconclusive") else otherwise


@main.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--target", type=click.Choice(["host", "x86_64", "arm64"]), default="host", show_default=True,
              help="Runtime the artifact is measured on (arm64 on an x86 host runs emulated under qemu).")
@click.option("--budget", default=None, help="Size limit of the exported artifact: 4MB, 4MiB, 500KB, 123456.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True)
@click.option("--method", type=click.Choice(["cc", "ngf", "cc+ngf", "clp", "none"]), default="cc", show_default=True,
              help="cc: Clean & Compact (data-free); ngf: natural-gradient fine-tuning of one layer; clp: baseline; none: compress only.")
@click.option("--clean-data", default=None, help="NGF clean data: file.npz, folder:DIR or fashion-mnist:1% (training split).")
@click.option("--ngf-layer", default=None, help="Layer NGF fine-tunes (default: the classifier head).")
@click.option("--out", "out_dir", default=None, help="Output directory (default: export/<model stem>/).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print report.json only.")
@click.option("--backdoor-target", type=int, default=None, metavar="CLASS",
              help="Class you suspect the backdoor targets: cleaning acts on it whatever the scan says "
                   "(a wrong class can cost much accuracy on a model that is easy to push).")
@class_prior_option
@int8_activations_option
@masks_option
@click.option("--quiet", is_flag=True, help="No progress output; only the final line.")
@handle_errors
def run_cmd(model, arch, input_shape, mean, std, target, budget, precision, method, clean_data, ngf_layer,
            out_dir, seed, as_json, backdoor_target, class_prior, int8_activations, masks, quiet):
    """Clean MODEL of backdoors, compress it to --budget, export ONNX and measure it on --target.

    Exit 0: within budget, parity passed, no backdoor suspected after cleaning; 1: a gate failed
    (the last line says which); 2: bad input.
    """
    from .pipeline import RunConfig, run
    from .ui import console as make_console

    err = make_console(stderr=True)
    log = None if (quiet or as_json) else (lambda msg: err.print(msg, highlight=False, markup=False))
    config = RunConfig(method=method, target=target, budget=budget, precision=precision, clean_data=clean_data,
                       ngf_layer=ngf_layer, out_dir=out_dir, seed=seed, backdoor_target=backdoor_target,
                       int8_activations=int8_activations, masks=masks)
    report, out = run(model, config, dict(arch=arch, input_shape=input_shape, mean=mean, std=std,
                                          class_prior=class_prior), log=log)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    elif not quiet:
        before, after = report["scan_before"], report["scan_after"]
        lat = report.get("latency_ms") or {}
        click.echo(f"scan before: {_said(before, 'SUSPECTED, target ' + str(before['target_class']), 'clean')} "
                   f"(score {before['score']:.2f}); after: {_said(after, 'SUSPECTED', 'not suspected')} (score {after['score']:.2f})"
                   + (f"; cleaned against class {backdoor_target} (--backdoor-target)" if backdoor_target is not None else ""))
        from .report import scan_notes

        for note in scan_notes(before):
            click.echo(note)
        if report.get("size_bytes") is not None:
            click.echo(f"artifact {out / 'model.onnx'}: {report['size_bytes']:,} bytes {report['precision']} "
                       f"(was {report['original']['size_bytes']:,}); p50 {lat.get('p50', float('nan')):.2f} ms"
                       f"{' (emulated)' if lat.get('emulated') else ''} on {report['target']}")
        cap = (report.get("cc") or {}).get("rank_cap_bytes")
        if cap is not None:
            allowed = f" (the budget allowed {report['budget_bytes']:,})" if report.get("budget_bytes") else ""
            click.echo(f"ranks: capped at {cap:,} bytes{allowed} since a backdoor is suspected: larger ranks keep more "
                       "of it (README, 'Ranks')")
        click.echo(f"report: {out / 'report.html'}")
    failed = [f"{k}: {v['detail']}" for k, v in report["gates"].items() if not v["passed"]]
    if failed:
        raise GateFailed("; ".join(failed))
    if not as_json:
        said = {"budget": "within budget", "parity": "parity ok", "backdoor": "no backdoor suspected after cleaning"}
        click.echo("passed: " + ", ".join(said.get(k, k) for k in report["gates"]))


if __name__ == "__main__":
    main()
