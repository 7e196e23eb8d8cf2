"""Run report: PNG plots (loss, kNN during training, 2-D embedding of test features) and ``report.md``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
import torch

from .figures import get_cmap, subplots
from ..evaluate.evaluation_registry import evaluation_notes, evaluation_rows
from ..rundir import RunDir, read_metrics


@dataclass(frozen=True)
class EvaluatedTestSet:
    """The evaluated test images' encoder features, their labels (None without labels) and the class names: what
    the embedding plot and the retrieval grid draw."""
    features: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]


def _line_plot(run_dir: Path, name: str, points, ylabel: str, title: str, marker=None) -> str:
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(*zip(*points), marker=marker)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / name, dpi=110)
    return name


def plot_training(run_dir: Path) -> list[str]:
    """``loss.png`` (training loss) and ``knn.png`` (kNN accuracy on the validation split during training)."""
    rows = read_metrics(RunDir(run_dir))
    made = []
    loss = [(r["epoch"], r["loss"]) for r in rows if "loss" in r]
    if loss:
        made.append(_line_plot(run_dir, RunDir.LOSS_PLOT, loss, "training loss", "SSL loss"))
    knn = [(r["epoch"], r["knn_val"]) for r in rows if "knn_val" in r]
    if knn:
        made.append(_line_plot(run_dir, RunDir.KNN_PLOT, knn, "kNN accuracy (validation subset)",
                               monitor_title(rows), marker="o"))
    return made


def monitor_title(rows: list[dict]) -> str:
    """What the kNN monitor measured, for its plot: the evaluation's kNN (saved readout, k and T chosen on the
    validation subset) on seeded subsets; older runs (a fixed k and T, no ``knn_k`` in their rows) say so."""
    last = next((r for r in reversed(rows) if "knn_val" in r), {})
    if "knn_k" not in last:
        return "kNN accuracy during training (fixed k and T)"
    return (f"kNN monitor: the evaluation's protocol on seeded subsets\n(saved readout, k and T chosen on the "
            f"validation subset; last: k={last['knn_k']}, T={last['knn_temperature']:g})")


def plot_embedding(run_dir: Path, feats, labels, classes, kind: str, points: int, seed: int) -> str | None:
    if kind == "none" or labels is None:
        return None
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(feats), min(points, len(feats)), replace=False))
    x = feats[idx].numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = labels[idx].numpy()
    if len(x) < 3:  # too few test points to map
        return None
    if kind == "tsne":
        x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
        # perplexity must stay below the number of points (a small folder's validation split)
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(x) - 1) / 3)
                  ).fit_transform(x)
    else:
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    fig, ax = subplots(figsize=(6.5, 5.5))
    cmap = get_cmap("tab10")
    for c in np.unique(y):
        m = y == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(int(c) % 10),
                   label=classes[c] if c < len(classes) else str(c))
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"test features ({kind.upper()}, {len(idx)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(RunDir(run_dir).plot(RunDir.EMBEDDING_PLOT), dpi=110)
    return RunDir.EMBEDDING_PLOT


def results_table(results: dict) -> list[tuple[str, str, str]]:
    """(metric, SSL encoder, raw pixels) rows of an eval.json dict: every evaluation's rows, in the registry's order
    (:data:`selfsup.evaluate.evaluation_registry.EVALUATIONS`)."""
    return evaluation_rows(results)


def run_warnings(results: dict) -> list[str]:
    """The run's warning sentences (``results["warnings"]``; from ``results["collapse"]`` for older eval.json)."""
    ws = list(results.get("warnings") or [])
    c = results.get("collapse") or {}
    if not ws and c.get("collapsed"):
        ws.append(f"COLLAPSE ALARM ({c['verdict']}): {c['message']}")
    for split, n in (results.get("data_counts") or {}).items():  # files the data left out (evaluation adds them)
        if n and (n.get("skipped") or n.get("ignored")):
            ws.append(f"{split} data: {n.get('skipped', 0)} unreadable file(s) skipped, {n.get('ignored', 0)} "
                      f"file(s) that are not images ignored")
    return ws


def budget_sentence(budget: dict) -> str:
    """What a ``train.time_budget`` bought, from train_summary.json's ``budget``: "the budget 10m bought 1234 steps
    (2.3 epochs) at 0.45 s per step measured; 598 s used"."""
    measured = f" at {budget['seconds_per_step']:.3g} s per step measured" if "seconds_per_step" in budget else \
        " (recorded in config.yaml; not calibrated in this run)"
    used = f"; {budget['used_seconds']:.0f} s used (calibration + training)" if "used_seconds" in budget else ""
    return (f"the budget {budget['time_budget']} bought {budget['steps']} steps ({budget['epochs']:g} epochs)"
            f"{measured}{used}")


def print_results(results: dict) -> None:
    t = Table(title=f"selfsup results — {results['method']} on {results['data']}")
    t.add_column("metric")
    t.add_column("SSL encoder", justify="right")
    t.add_column("raw pixels", justify="right")
    for r in results_table(results):
        t.add_row(*r, style="bold red" if r[1].startswith("COLLAPSED") else None)
    tr = results.get("train")
    if tr:
        t.caption = (f"pre-training {tr['train_seconds']:.0f} s, {tr['images_per_second']:.0f} img/s, "
                     f"evaluation {results['eval_seconds']:.0f} s")
    con = Console()
    con.print(t)
    for w in run_warnings(results):  # under the table: the last lines the user sees
        con.print(f"[bold red]WARNING:[/] {escape(w)}")


def write_report(run_dir: Path, results: dict, test: EvaluatedTestSet, embedding: str, points: int, seed: int):
    """``report.md`` with the training plots and the embedding plot (``embedding``: its kind, ``points``: how many
    test features it draws, seeded by ``seed``); returns the plots' file names."""
    run_dir = Path(run_dir)
    plots = plot_training(run_dir)
    emb = plot_embedding(run_dir, test.features, test.labels, test.classes, embedding, points, seed)
    if emb:
        plots.append(emb)
    lines = [f"# selfsup run `{run_dir.name}`", "", f"method **{results['method']}**, data **{results['data']}**", ""]
    for w in run_warnings(results):
        lines += [f"> **⚠ WARNING: {w}**", ""]
    tr = results.get("train")
    if tr:
        lines += [f"pre-training: {tr['steps']} steps in {tr['train_seconds']:.0f} s "
                  f"({tr['images_per_second']:.0f} img/s, {tr['devices']} process(es), {tr['threads']} threads)", ""]
        if tr.get("budget"):
            lines += [f"time budget: {budget_sentence(tr['budget'])}", ""]
    if "ssl" in results:  # the table and its notes where the data had labels
        lines += ["| metric | SSL encoder | raw pixels |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in results_table(results)]
        lines += [""]
        for note in evaluation_notes(results):
            lines += [note, ""]
    lines += [f"![{p}]({p})" for p in plots]
    RunDir(run_dir).report_md.write_text("\n".join(lines) + "\n")
    return plots
