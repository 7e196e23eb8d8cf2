"""``selfsup stream`` (pre-training on a folder of chunks) and ``selfsup sequence`` (the streaming study)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import load_config
from ..deferred import load
from ..errors import SelfsupError
from ..errors import Interrupted
from .output import fail, show, table
from .stopping import stopped
from .torchrun_relaunch import relaunch_under_torchrun
from ..rundir import RunDir


def stream(config: Path = typer.Option(..., "--config", "-c", help="YAML config (method, model, stream strategy)"),
           source: Path = typer.Option(..., "--source",
                                       help="folder of chunks: image folders, .npz files, .tar shards"),
           overrides: Optional[List[str]] = typer.Argument(None,
                                                           help="key=value overrides, e.g. stream.strategy=replay"),
           watch: bool = typer.Option(False, "--watch",
                                      help="keep waiting for new chunks and train on each as it lands"),
           idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="--watch: stop after this many "
                                                        "seconds without a new chunk"),
           max_chunks: Optional[int] = typer.Option(None, "--max-chunks", min=1,
                                                    help="train at most this many new chunks in this call, then stop"),
           devices: int = typer.Option(1, "--devices", min=1, help="DDP processes (gloo on CPU, nccl on GPU)")):
    """Pre-train on the chunks of a folder in name order, checkpointing and evaluating after each; the same command
    resumes after a crash (manifest.json records what was consumed). Ctrl-C (or SIGTERM) checkpoints the chunk in
    progress after its current step and exits 130 (143)."""
    try:
        load_config(config, overrides or [])  # a bad config fails here, once, before any process starts
        dist, workflow = load("selfsup.distributed"), load("selfsup.streams.stream_workflow")
        if devices > 1 and not dist.launched_by_torchrun():
            relaunch_under_torchrun(devices)
        r = workflow.stream(config, overrides or [], source, workflow.StreamIntake(watch, idle_timeout, max_chunks))
        dist.shutdown()
        if dist.is_main():
            _print_stream(r.run_dir, r.summary)
    except (Interrupted, KeyboardInterrupt) as e:  # the chunk in progress resumes from its step checkpoint
        stopped(e, f"run the same command to continue ({RunDir.MANIFEST} records the consumed chunks)")
    except SelfsupError as e:
        fail(str(e))


def _print_stream(run_dir: Path, summary: dict) -> None:
    t = table(f"stream {run_dir}", "metric", "value")
    for k, v in summary.items():
        if isinstance(v, (int, float)):
            as_percent = isinstance(v, float) and v <= 1 and k not in ("train_seconds",)
            t.add_row(k, f"{100 * v:.2f} %" if as_percent else str(v))
        elif k.endswith("_metrics"):
            for mk, mv in v.items():
                t.add_row(f"{k[:-8]} {mk}", f"{100 * mv:.2f}")
    show(t)
    typer.echo(f"run directory: {run_dir}  ({RunDir.MANIFEST}, {RunDir.STREAM}, {RunDir.METRICS}, "
               f"{RunDir.CHUNK_ACCURACY_PLOT})")


def sequence(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/stream_fmnist.yaml)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, "
                                                             "e.g. sequence.kinds=[instance]"),
             seeds: int = typer.Option(1, "--seeds", min=1, help="run the study for seeds seed .. seed+N-1 (each in "
                                       "runs/<name>/seed<S>/) and aggregate them: mean ± std, the joint - "
                                       "sequential gap where it exceeds 2 std, a summary plot per sequence")):
    """The streaming study in one command: build the instance / random-class / distant-class / domain / far-domain
    incremental sequences from a labelled data set and run every strategy on each; prints the table, writes plots."""
    try:
        load("selfsup.streams.stream_workflow").sequence(config, overrides or [], seeds=seeds)
    except SelfsupError as e:
        fail(str(e))
