"""Command line: ``selfsup demo | pretrain | eval | methods | stream | sequence | finetune | attack | corrupt``.

Every user error (bad config, missing data, corrupt file, unreadable checkpoint) ends in one line on stderr and exit
code 2, never a traceback.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import typer
from rich.table import Table

from ..robustness.corruptions import CORRUPTIONS, corrupt as apply_corruption
from . import collection_commands as collection, compare_command as compare_cmd, embed_commands as embed_cmd
from .output import fail, show, table
from ..config import load_config
from ..data.sources import FMNIST_DEFAULT_DIR
from ..distributed import is_main, launched_by_torchrun, shutdown
from ..takeaways.device import resolve_device
from ..errors import SelfsupError
from ..robustness.attacks import ATTACKS, build_classifier, corruption_report, robustness_report
from ..methods import DESCRIPTIONS, METHODS
from ..report.html import write_html_report
from ..report.results import print_results
from ..rundir import RunDir, read_eval, write_report_record
from ..workflows import evaluate_and_report, pretrain as run_pretrain
from ..finetune.finetune_workflow import finetune as run_finetune
from ..streams.stream_workflow import sequence as run_sequence
from ..streams.stream_workflow import stream as run_stream

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-supervised representation learning on images.")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


_fail, _table, _show = fail, table, show


def _relaunch_under_torchrun(devices: int) -> None:
    """Re-execute this very command under torchrun with ``devices`` processes (DDP)."""
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--devices":
            skip = True
            continue
        if a.startswith("--devices="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           "-m", "selfsup.cli", *cleaned]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def pretrain(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=2"),
             resume: bool = typer.Option(False, "--resume", help="continue the run from its last checkpoint"),
             devices: int = typer.Option(1, "--devices", min=1, help="DDP processes (gloo on CPU, nccl on GPU)"),
             no_eval: bool = typer.Option(False, "--no-eval", help="skip the evaluation after training")):
    """Pre-train an encoder without labels, then evaluate it and write the report."""
    try:
        cfg = load_config(config, overrides or [])
        if devices > 1 and not launched_by_torchrun():
            _relaunch_under_torchrun(devices)
        result = run_pretrain(cfg, resume=resume, evaluate=not no_eval)
        shutdown()  # on success only: after a rank's error a collective teardown would wait for it forever
        if is_main() and not no_eval:
            _print_eval(result.run_dir)
    except SelfsupError as e:
        _fail(str(e))


def _print_eval(run_dir: Path) -> None:
    print_results(read_eval(RunDir(run_dir)))
    typer.echo(f"run directory: {run_dir}  ({RunDir.REPORT_MD}, plots, {RunDir.METRICS}, {RunDir.EVAL}, "
               f"{RunDir.CHECKPOINTS}/)")


@app.command("eval")
def evaluate(run_dir: Path = typer.Argument(..., help="a run directory written by pretrain"),
             device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Evaluate a trained run: kNN, linear probe, baselines, transfer, diagnostics; rewrite its report. Features are
    extracted in batches on the device."""
    try:
        if not RunDir(run_dir).config.exists():
            raise SelfsupError(f"{run_dir} is not a selfsup run directory (no {RunDir.CONFIG})")
        evaluate_and_report(run_dir, device=resolve_device(device, run_dir))
        _print_eval(run_dir)
    except SelfsupError as e:
        _fail(str(e))


@app.command()
def methods():
    """List the SSL methods and their hyper-parameters."""
    t = Table(title="selfsup methods")
    t.add_column("name")
    t.add_column("views")
    t.add_column("what")
    t.add_column("parameters (defaults)")
    for name, cls in METHODS.items():
        params = ", ".join(f"{k}={v}" for k, v in cls.Params().model_dump().items())
        t.add_row(name, cls.recipe, DESCRIPTIONS.get(name, ""), params)
    _show(t)


@app.command()
def stream(config: Path = typer.Option(..., "--config", "-c", help="YAML config (method, model, stream strategy)"),
           source: Path = typer.Option(..., "--source", help="folder of chunks: image folders, .npz files, .tar shards"),
           overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. stream.strategy=replay"),
           watch: bool = typer.Option(False, "--watch", help="keep waiting for new chunks and train on each as it lands"),
           idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout",
                                                        help="--watch: stop after this many seconds without a new chunk"),
           max_chunks: Optional[int] = typer.Option(None, "--max-chunks", min=1,
                                                    help="train at most this many new chunks in this call, then stop"),
           devices: int = typer.Option(1, "--devices", min=1, help="DDP processes (gloo on CPU, nccl on GPU)")):
    """Pre-train on the chunks of a folder in name order, checkpointing and evaluating after each; the same command
    resumes after a crash (manifest.json records what was consumed)."""
    try:
        load_config(config, overrides or [])  # a bad config fails here, once, before any process starts
        if devices > 1 and not launched_by_torchrun():
            _relaunch_under_torchrun(devices)
        r = run_stream(config, overrides or [], source, watch=watch, idle_timeout=idle_timeout, max_chunks=max_chunks)
        shutdown()
        if is_main():
            _print_stream(r.run_dir, r.summary)
    except KeyboardInterrupt:
        typer.echo(f"stopped; run the same command to continue ({RunDir.MANIFEST} records the consumed chunks)")
    except SelfsupError as e:
        _fail(str(e))


def _print_stream(run_dir: Path, summary: dict) -> None:
    t = _table(f"stream {run_dir}", "metric", "value")
    for k, v in summary.items():
        if isinstance(v, (int, float)):
            t.add_row(k, f"{100 * v:.2f} %" if isinstance(v, float) and v <= 1 and k not in ("train_seconds",) else str(v))
        elif k.endswith("_metrics"):
            for mk, mv in v.items():
                t.add_row(f"{k[:-8]} {mk}", f"{100 * mv:.2f}")
    _show(t)
    typer.echo(f"run directory: {run_dir}  ({RunDir.MANIFEST}, {RunDir.STREAM}, {RunDir.METRICS}, "
               f"{RunDir.CHUNK_ACCURACY_PLOT})")


@app.command()
def sequence(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/stream_fmnist.yaml)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. sequence.kinds=[instance]"),
             seeds: int = typer.Option(1, "--seeds", min=1, help="run the study for seeds seed .. seed+N-1 (each in "
                                       "runs/<name>/seed<S>/) and aggregate them: mean ± std, the joint - "
                                       "sequential gap where it exceeds 2 std, a summary plot per sequence")):
    """The streaming study in one command: build the instance / random-class / distant-class / domain / far-domain
    incremental sequences from a labelled data set and run every strategy on each; prints the table, writes plots."""
    try:
        run_sequence(config, overrides or [], seeds=seeds)
    except SelfsupError as e:
        _fail(str(e))


@app.command()
def finetune(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/finetune_fmnist.yaml)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. finetune.loss=sat"),
             labels: Optional[Path] = typer.Option(None, "--labels", help="training labels (.csv, .npz or .npy)"),
             init: Optional[Path] = typer.Option(None, "--init", help="a selfsup run directory: start from its encoder"),
             resume: bool = typer.Option(False, "--resume", help="continue the run from its last checkpoint"),
             device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the config's "
                                                                         "train.device)")):
    """Train a classifier on (noisy) labels with ce, label_smoothing, gce, sat or sat_selective."""
    extra = [f"finetune.labels={labels}"] if labels else []
    extra += [f"finetune.init={init}"] if init else []
    try:
        if device is not None:
            extra.append(f"train.device={resolve_device(device)}")
        res = run_finetune(config, [*(overrides or []), *extra], resume=resume)
        _print_finetune(res)
    except SelfsupError as e:
        _fail(str(e))


def _print_finetune(res: dict) -> None:
    t = _table(f"finetune: {res.get('loss')}", "metric", "value")
    for k in ("actual_label_error", "test_acc_last", "test_acc_at_best_val", "test_acc_max"):
        if res.get(k) is not None:
            t.add_row(k, f"{100 * res[k]:.2f} %")
    sel = res.get("selective") or {}
    for name in ("abstain", "softmax_response"):
        if name in sel:
            risks = ", ".join(f"{100 * r['selective_risk']:.2f}" for r in sel[name]["table"])
            t.add_row(f"{name}: selective risk % at coverage 100..70", risks)
            t.add_row(f"{name}: AURC", f"{1000 * sel[name]['aurc']:.2f} ×10⁻³")
    _show(t)


def _csv(text: str, cast=str) -> list:
    return [cast(t) for t in text.split(",") if t.strip()]


@app.command()
def attack(run_dir: Path = typer.Argument(..., help="a pretrain run (linear/knn) or a finetune run (finetuned)"),
           classifier: str = typer.Option("linear", "--classifier", help="linear | knn | finetuned"),
           attacks: str = typer.Option("fgsm,pgd,autoattack", "--attack", help="comma list: fgsm, pgd, autoattack, square, apgd-ce, apgd-t"),
           eps: str = typer.Option("0.05,0.1", "--eps", help="comma list of L-inf radii (images in [0, 1])"),
           n: int = typer.Option(1000, "--n", min=1, help="test images attacked (a seeded random subset)"),
           steps: int = typer.Option(20, "--steps", min=1, help="PGD steps"),
           seed: int = typer.Option(0, "--seed"),
           device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Clean and robust accuracy of a classifier on the run's encoder under L-inf attacks (worst case per image),
    attacked on the device."""
    try:
        names = _csv(attacks)
        bad = [a for a in names if a not in ATTACKS]
        if bad:
            raise SelfsupError(f"unknown attack {bad[0]!r} ({', '.join(ATTACKS)})")
        try:
            radii = _csv(eps, float)
        except ValueError:
            raise SelfsupError(f"--eps {eps!r}: expected numbers like 0.05,0.1") from None
        if not radii or any(not 0 < e <= 1 for e in radii):
            raise SelfsupError("--eps: every radius must be in (0, 1]")
        model, x, y = build_classifier(run_dir, classifier, resolve_device(device, run_dir), seed=seed)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(n, len(x))].to(x.device)
        rep = robustness_report(model, x[idx], y[idx], radii, names, seed, steps)
        rep.update(classifier=classifier, attacks=names)
        write_report_record(RunDir(run_dir).robustness(classifier), rep)
        write_html_report(run_dir)  # the robustness section and any gradient-masking warning at the top
        _print_robustness(rep)
    except SelfsupError as e:
        _fail(str(e))


def _print_robustness(rep: dict) -> None:
    cols = list(next(iter(rep["eps"].values())).keys())
    t = _table(f"robustness: {rep['classifier']} classifier, {rep['n']} test images (clean {100 * rep['clean']:.2f} %)",
               "eps", *cols)
    for e, per in rep["eps"].items():
        t.add_row(e, *[f"{100 * per[c]['accuracy']:.2f} %" + (" ⚠" if per[c].get("library_warnings") else "")
                       for c in cols])
    _show(t)
    for e, per in rep["eps"].items():
        for c, v in per.items():
            for w in v.get("library_warnings", []):
                typer.echo(f"warning (eps {e}, {c}): {w}")


@app.command()
def corrupt(run_dir: Path = typer.Argument(..., help="a pretrain run (linear/knn) or a finetune run (finetuned)"),
            classifier: str = typer.Option("linear", "--classifier", help="linear | knn | finetuned"),
            n: int = typer.Option(10000, "--n", min=1, help="test images (a seeded random subset)"),
            corruptions: Optional[str] = typer.Option(None, "--corruptions", help="comma list (default: all 15)"),
            seed: int = typer.Option(0, "--seed"),
            save: Optional[Path] = typer.Option(None, "--save", help="also write the corrupted test set (.npz per corruption)"),
            device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Accuracy under common corruptions (Fashion-MNIST-C, built locally in the style of MNIST-C, 5 severities)."""
    try:
        names = _csv(corruptions) if corruptions else list(CORRUPTIONS)
        bad = [c for c in names if c not in CORRUPTIONS]
        if bad:
            raise SelfsupError(f"unknown corruption {bad[0]!r} (choose {', '.join(CORRUPTIONS)})")
        model, x, y = build_classifier(run_dir, classifier, resolve_device(device, run_dir), seed=seed)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(n, len(x))].to(x.device)
        imgs = (x[idx].cpu() * 255).round().to(torch.uint8)
        rep = corruption_report(model, imgs, y[idx], names, seed=seed)
        rep.update(classifier=classifier, n=len(idx))
        write_report_record(RunDir(run_dir).corruptions(classifier), rep)
        write_html_report(run_dir)
        if save:
            save.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(names):
                arr = np.stack([apply_corruption(imgs, name, s, seed + 1000 * i + s).numpy() for s in range(1, 6)])
                np.savez_compressed(save / f"{name}.npz", images=arr, labels=y[idx].cpu().numpy())
        t = _table(f"corruptions: {classifier} classifier, {len(idx)} test images", "corruption", "s1", "s2", "s3",
                   "s4", "s5", "mean")
        for name, per in rep["corruptions"].items():
            vals = list(per.values())
            t.add_row(name, *[f"{100 * v:.1f}" for v in vals], f"{100 * sum(vals) / len(vals):.1f}")
        _show(t)
        typer.echo(f"clean {100 * rep['clean']:.2f} %, mean corruption accuracy {100 * rep['mean_corruption_accuracy']:.2f} %")
    except SelfsupError as e:
        _fail(str(e))


@app.command()
def demo(overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides of configs/demo.yaml")):
    """Pre-train on Fashion-MNIST without labels (5-8 min on 2 CPU cores), evaluate, print the results table."""
    root = os.environ.get("SELFSUP_FMNIST_DIR", FMNIST_DEFAULT_DIR)
    if not Path(root).is_dir() or not any(Path(root).glob("train-images-idx3-ubyte*")):
        _ensure_fmnist(root)
    try:
        name = "demo-" + time.strftime("%Y%m%d-%H%M%S")
        cfg = load_config(CONFIG_DIR / "demo.yaml", [f"name={name}", *(overrides or [])])
        result = run_pretrain(cfg)
        _print_eval(result.run_dir)
    except SelfsupError as e:
        _fail(str(e))


def _ensure_fmnist(root: str) -> None:
    cmd = "apt-get install -y dataset-fashion-mnist"
    if shutil.which("apt-get") and os.geteuid() == 0:
        typer.echo(f"Fashion-MNIST not found in {root}; installing it: apt-get update && {cmd}")
        ok = subprocess.call(["apt-get", "update", "-qq"]) == 0 and subprocess.call(cmd.split()) == 0
        if ok and Path(root).is_dir():
            return
    _fail(f"Fashion-MNIST not found in {root}. Install it with 'sudo apt-get update && sudo {cmd}', or set "
          f"SELFSUP_FMNIST_DIR to a folder holding the idx files")


app.command()(embed_cmd.embed)
app.command()(embed_cmd.export)
app.command()(compare_cmd.compare)
app.command()(collection.neighbours)
app.command()(collection.select)


def main() -> None:
    try:
        app()
    except SelfsupError as e:  # pragma: no cover - commands catch their own
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
