"""``selfsup neighbours`` (nearest images, near-duplicates) and ``selfsup select`` (which images to label first)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..deferred import load
from ..errors import SelfsupError
from .output import fail, show, table

SHOWN_PAIRS = 10
"""Near-duplicate pairs printed in the summary (duplicates.csv has them all)."""
STRATEGIES = ("kcenter", "kcenter_dense", "typical", "random")
"""selfsup.takeaways.select.STRATEGIES, named here for --help (which must not import it; tests/test_startup.py)."""


def neighbours(run_dir: Path = typer.Argument(..., help="a run directory with a trained backbone"),
               source: Optional[Path] = typer.Option(None, "--source",
                                                     help="image folder to search (default: the run's training data)"),
               query: Optional[List[Path]] = typer.Option(None, "--query", help="a query image (repeatable)"),
               sample: Optional[int] = typer.Option(None, "--sample", help="use N seeded collection images as queries"),
               k: int = typer.Option(8, "--k", help="neighbours per query"),
               threshold: float = typer.Option(0.95, "--threshold",
                                               help="cosine similarity at or above which a pair is a near-duplicate"),
               out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: RUN/neighbours/)"),
               device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                  "train.device if available here, else cpu)"),
               seed: int = typer.Option(0, "--seed", help="seed of --sample's draw")):
    """Nearest images in a collection (neighbours.png, neighbours.csv) and near-duplicate pairs (duplicates.csv)."""
    try:
        search, shown = load("selfsup.takeaways.neighbours"), load("selfsup.takeaways.neighbours_report")
        r = search.find_neighbours(run_dir, source, search.NeighbourQuery(query or None, sample, seed, k), threshold,
                                   device, progress=sys.stderr.isatty())
        paths = shown.write_neighbours(r, out if out is not None else run_dir / "neighbours")
    except SelfsupError as e:
        fail(str(e))
    t = table(f"{len(r.ids)} images, {len(r.query_ids)} quer{'y' if len(r.query_ids) == 1 else 'ies'}, "
              f"k = {r.idx.shape[1]}", "query", "nearest", "similarity")
    for q, qid in enumerate(r.query_ids[:shown.GRID_ROWS]):
        t.add_row(qid, r.ids[int(r.idx[q, 0])], f"{float(r.sims[q, 0]):.4f}")
    show(t)
    typer.echo(f"{len(r.duplicates)} near-duplicate pair(s) with cosine similarity ≥ {threshold:g}"
               + (":" if r.duplicates else ""))
    for i, j, s in r.duplicates[:SHOWN_PAIRS]:
        typer.echo(f"  {s:.4f}  {r.ids[i]}  {r.ids[j]}")
    if len(r.duplicates) > SHOWN_PAIRS:
        typer.echo(f"  … {len(r.duplicates) - SHOWN_PAIRS} more in duplicates.csv")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def select(run_dir: Path = typer.Argument(..., help="a run directory with a trained backbone"),
           source: Optional[Path] = typer.Option(None, "--source",
                                                 help="image folder to choose from (default: the run's training data)"),
           n: int = typer.Option(..., "--n", help="how many images to choose"),
           strategy: str = typer.Option("typical", "--strategy", help=" | ".join(STRATEGIES)
                                        + " (typical: best on the 1 %-label benchmark, BENCHMARKS.md)"),
           out: Optional[Path] = typer.Option(None, "--out", help="CSV file (default: RUN/select-STRATEGY-N.csv)"),
           seed: int = typer.Option(0, "--seed"),
           device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                  "train.device if available here, else cpu)")):
    """Which K images to label first: k-centre greedy coverage, typicality per cluster, or random."""
    try:
        path = out if out is not None else run_dir / f"select-{strategy}-{n}.csv"
        choose = load("selfsup.takeaways.select")
        rows = choose.select_from_collection(run_dir, source, choose.Selection(n, strategy, seed), device, out=path,
                                             progress=sys.stderr.isatty())
    except SelfsupError as e:
        fail(str(e))
    if "class" in rows[0]:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
        t = table(f"{strategy}: {len(rows)} images to label, by class", "class", "images")
        for c, m in sorted(counts.items(), key=lambda cm: (-cm[1], cm[0])):
            t.add_row(c, str(m))
        show(t)
    typer.echo(f"{strategy}: {len(rows)} images to label first, written to {path} (first: "
               + ", ".join(r["id"] for r in rows[:5]) + (", …)" if len(rows) > 5 else ")"))
