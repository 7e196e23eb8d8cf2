"""``selfsup pretrain``, ``eval``, ``methods`` and ``demo``: pre-training, evaluation and the methods it knows."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..config import load_config
from ..deferred import load
from ..errors import SelfsupError
from ..errors import Interrupted
from ..method_catalogue import read_catalogue
from .output import fail, show
from .stopping import resume_command, stopped
from .torchrun_relaunch import relaunch_under_torchrun
from ..rundir import RunDir, read_eval

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The repository's configs/ (``selfsup demo`` reads demo.yaml there)."""


def pretrain(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=2"),
             resume: bool = typer.Option(False, "--resume", help="continue the run from its last checkpoint"),
             devices: int = typer.Option(1, "--devices", min=1, help="DDP processes (gloo on CPU, nccl on GPU)"),
             no_eval: bool = typer.Option(False, "--no-eval", help="skip the evaluation after training")):
    """Pre-train an encoder without labels, then evaluate it and write the report. Ctrl-C (or SIGTERM) saves a
    checkpoint after the step in progress and exits 130 (143) naming the command that resumes."""
    cfg = None
    try:
        cfg = load_config(config, overrides or [])
        dist = load("selfsup.distributed")
        if devices > 1 and not dist.launched_by_torchrun():
            relaunch_under_torchrun(devices)
        result = load("selfsup.workflows").pretrain(cfg, resume=resume, evaluate=not no_eval)
        dist.shutdown()  # on success only: after a rank's error a collective teardown would wait for it forever
        if dist.is_main() and not no_eval:
            _print_eval(result.run_dir)
    except (Interrupted, KeyboardInterrupt) as e:
        stopped(e, resume_command(None if cfg is None else RunDir.of(cfg).checkpoints))
    except SelfsupError as e:
        fail(str(e))


def _print_eval(run_dir: Path) -> None:
    load("selfsup.report.results").print_results(read_eval(RunDir(run_dir)))
    typer.echo(f"run directory: {run_dir}  ({RunDir.REPORT_MD}, plots, {RunDir.METRICS}, {RunDir.EVAL}, "
               f"{RunDir.CHECKPOINTS}/)")


def evaluate(run_dir: Path = typer.Argument(..., help="a run directory written by pretrain"),
             device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Evaluate a trained run: kNN, linear probe, baselines, transfer, diagnostics; rewrite its report. Features are
    extracted in batches on the device."""
    try:
        if not RunDir(run_dir).config.exists():
            raise SelfsupError(f"{run_dir} is not a selfsup run directory (no {RunDir.CONFIG})")
        load("selfsup.workflows").evaluate_and_report(
            run_dir, device=load("selfsup.takeaways.device").resolve_device(device, run_dir))
        _print_eval(run_dir)
    except SelfsupError as e:
        fail(str(e))


def methods():
    """List the SSL methods and their hyper-parameters."""
    t = Table(title="selfsup methods")
    t.add_column("name")
    t.add_column("views")
    t.add_column("what")
    t.add_column("parameters (defaults)")
    try:
        entries = read_catalogue()  # generated from selfsup.methods, read without importing torch
    except SelfsupError as e:
        fail(str(e))
    for m in entries:
        t.add_row(m.name, m.recipe, m.description, ", ".join(f"{k}={v}" for k, v in m.params.items()))
    show(t)


def demo(overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides of configs/demo.yaml")):
    """Pre-train on Fashion-MNIST without labels (5-8 min on 2 CPU cores), evaluate, print the results table."""
    try:
        load("selfsup.workflows.fashion_mnist_install").ensure_fashion_mnist(log=typer.echo)
        name = "demo-" + time.strftime("%Y%m%d-%H%M%S")
        cfg = load_config(CONFIG_DIR / "demo.yaml", [f"name={name}", *(overrides or [])])
        result = load("selfsup.workflows").pretrain(cfg)
        _print_eval(result.run_dir)
    except SelfsupError as e:
        fail(str(e))
