"""``selfsup compare RUN RUN ...``: one table and one plot across runs (pre-training and stream runs)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from ..deferred import load
from ..errors import SelfsupError
from .output import fail, show


def compare(runs: List[Path] = typer.Argument(..., help="run directories (pretrain or stream runs)"),
            out: Path = typer.Option(Path("compare"), "--out",
                                     help="folder for compare.csv, compare.json, compare.png")):
    """One table (method, data, steps, time, img/s, kNN, linear, low-label probes, few-shot, RankMe) and one plot
    across runs; stream runs also plot their accuracy after each chunk."""
    try:
        comparison = load("selfsup.takeaways.compare")
        rows = comparison.compare_runs(runs)
        files = comparison.write_comparison(rows, out)
    except SelfsupError as e:
        fail(str(e))
    cells = comparison.format_rows(rows)
    columns = comparison.columns()
    shown = [i for i, _ in enumerate(columns) if any(r[i] != "–" for r in cells)]  # no all-empty columns
    # one row per measure, one column per run: reads in a terminal for the few runs one compares at a time
    t = Table(title=f"{len(rows)} runs (accuracy % on the test set; 1 % / 10 % labels: linear probe)")
    t.add_column("")
    for r in cells:
        t.add_column(r[0], min_width=max(len(r[i]) for i in shown))
    for i in shown[1:]:
        t.add_row(columns[i].header, *[r[i] for r in cells])
    show(t)
    typer.echo(f"written: {files['csv']}, {files['json']}, {files['png']}")
