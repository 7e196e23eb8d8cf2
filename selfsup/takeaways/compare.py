"""Runs side by side: one row per run (method, data, steps, time, img/s, then every evaluation's columns: kNN, linear,
low-label probes, few-shot, RankMe) read from what each run directory already holds, and one figure.

A pre-training run is read from ``config.yaml``, ``train_summary.json`` and ``eval.json``; a stream run from
``stream.json`` (its accuracy after each chunk becomes a curve in the figure)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import DataError
from ..evaluate.evaluation_registry import evaluation_columns
from ..evaluate.suite_entry import Column
from ..number_format import whole
from ..report.figures import subplots
from ..rundir import RunDir, read_eval, read_stream_record, read_train_summary

RUN_COLUMNS = (Column("run", "run"), Column("kind", "kind"), Column("method", "method"), Column("data", "data"),
               Column("steps", "steps"), Column("train_s", "time s", whole), Column("img_per_s", "img/s", whole))
"""The comparison's own columns (what a run is, how long it trained); the evaluations' columns follow them."""


def columns() -> tuple[Column, ...]:
    """The comparison's columns, in order: :data:`RUN_COLUMNS`, then every evaluation's columns in the order of
    :data:`selfsup.evaluate.evaluation_registry.EVALUATIONS` (kNN, linear, low-label probes, few-shot, RankMe); the
    one list the rows, the CSV and ``selfsup compare``'s table are made of."""
    return RUN_COLUMNS + evaluation_columns()


def column_keys() -> list[str]:
    return [c.key for c in columns()]


def _read_json(path: Path, read, run: RunDir) -> dict:
    """``read(run)``, a DataError naming ``path`` when that fails."""
    try:
        return read(run)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load(RunDir(run_dir).config.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read {RunDir(run_dir).config}: {e}") from None


def run_row(run_dir: str | Path) -> dict:
    """One run's row: the :func:`column_keys` (None where the run has no such number) and, for stream runs, ``curve``:
    (chunks trained, linear accuracy) after each chunk, chunk 0 being the initial encoder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory")
    if not RunDir(run_dir).config.exists():
        raise DataError(f"{run_dir} is not a selfsup run directory (no {RunDir.CONFIG})")
    cfg = _config(run_dir)
    row = dict.fromkeys(column_keys())
    row.update(run=run_dir.name, method=(cfg.get("method") or {}).get("name"),
               data=(cfg.get("data") or {}).get("source"))
    batch = (cfg.get("train") or {}).get("batch_size")
    run = RunDir(run_dir)
    if run.stream_record.exists():
        return _stream_row(row, _read_json(run.stream_record, read_stream_record, run), batch)
    if not run.eval.exists():
        raise DataError(f"{run_dir} has no {RunDir.EVAL} (evaluate it first: selfsup eval {run_dir}) and no "
                        f"{RunDir.STREAM}")
    ev = _read_json(run.eval, read_eval, run)
    tr = ev.get("train") or (_read_json(run.train_summary, read_train_summary, run)
                             if run.train_summary.exists() else {})
    row.update(kind="pretrain", steps=tr.get("steps"), train_s=tr.get("train_seconds"),
               img_per_s=tr.get("images_per_second"))
    row.update({c.key: c.get(ev) for c in evaluation_columns()})
    return row


def _stream_row(row: dict, stream: dict, batch: int | None) -> dict:
    chunks = stream.get("chunks", [])
    summary = stream.get("summary", {})
    steps = sum(c.get("steps", 0) for c in chunks)
    seconds = sum(c.get("train_seconds", 0) for c in chunks)
    curve = []
    if "linear" in stream.get("init_eval", {}):
        curve.append((0, stream["init_eval"]["linear"]))
    curve += [(i + 1, c["eval"]["linear"]) for i, c in enumerate(chunks) if "linear" in c.get("eval", {})]
    row.update(kind=f"stream ({len(chunks)} chunks)", steps=steps, train_s=round(seconds, 1),
               img_per_s=steps * batch / seconds if batch and seconds else None, knn=summary.get("knn"),
               linear=summary.get("linear"), curve=curve)
    return row


def compare_runs(run_dirs) -> list[dict]:
    """The rows of ``run_dirs``, in the order given; at least one run."""
    if not run_dirs:
        raise DataError("name at least one run directory")
    return [run_row(d) for d in run_dirs]


def format_rows(rows: list[dict]) -> list[list[str]]:
    """The table as strings, one per column of :func:`columns`: accuracies in %, '–' where a run has no such
    number."""
    cols = columns()
    return [["–" if r[c.key] is None else c.format(r[c.key]) for c in cols] for r in rows]


def plot_comparison(rows: list[dict], path: Path) -> Path:
    """``path`` (PNG): kNN and linear accuracy per run as grouped bars; stream runs also as linear accuracy after
    each chunk in a second panel."""
    streams = [r for r in rows if r.get("curve")]
    fig, axes = subplots(1, 2 if streams else 1, figsize=(11 if streams else 7, 4), squeeze=False)
    ax = axes[0][0]
    width = 0.38
    xs = range(len(rows))
    for off, key, label in ((-width / 2, "knn", "kNN"), (width / 2, "linear", "linear probe")):
        vals = [100 * r[key] if r[key] is not None else 0 for r in rows]
        bars = ax.bar([x + off for x in xs], vals, width, label=label)
        for b, r in zip(bars, rows):
            if r[key] is not None:
                ax.annotate(f"{100 * r[key]:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [r["run"] if len(r["run"]) <= 18 else r["run"][:17] + "…" for r in rows],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    known = [100 * r[k] for r in rows for k in ("knn", "linear") if r[k] is not None]
    if known:
        ax.set_ylim(max(0.0, min(known) - 10), min(100.0, max(known) + 5))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("final accuracy per run")
    if streams:
        ax2 = axes[0][1]
        for r in streams:
            ax2.plot([c for c, _ in r["curve"]], [100 * a for _, a in r["curve"]], marker="o", label=r["run"])
        ax2.set_xlabel("chunks trained (0 = initial encoder)")
        ax2.set_ylabel("linear probe accuracy (%)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("stream runs: accuracy after each chunk")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_comparison(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """``compare.csv`` (the table, raw numbers), ``compare.json`` (rows with curves) and ``compare.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = column_keys()
    w.writerow(keys)
    w.writerows([["" if r[k] is None else r[k] for k in keys] for r in rows])
    atomic_write_text(out_dir / "compare.csv", buf.getvalue())
    atomic_write_text(out_dir / "compare.json", json.dumps(rows, indent=1))
    return {"csv": out_dir / "compare.csv", "json": out_dir / "compare.json",
            "png": plot_comparison(rows, out_dir / "compare.png")}
