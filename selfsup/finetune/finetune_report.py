"""Plots of classifier fine-tuning: accuracy on the (noisy) training labels vs test accuracy per epoch, and
risk-coverage curves of selective classification."""
from __future__ import annotations

from pathlib import Path

from ..report.figures import subplots
from ..rundir import RunDir


def plot_curves(run_dir: Path, epochs: list[dict], title: str) -> str | None:
    if not epochs:
        return None
    fig, ax = subplots(figsize=(6, 4))
    x = [e["epoch"] for e in epochs]
    for key, label in (("train_acc_noisy", "train, noisy labels"), ("train_acc_clean", "train, true labels"),
                       ("val_acc_noisy", "validation, noisy labels"), ("test_acc", "test (clean)")):
        if key in epochs[0]:
            ax.plot(x, [100 * e[key] for e in epochs], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    return _finish(fig, ax, RunDir(run_dir).plot(RunDir.CURVES_PLOT))


def plot_compare(path: Path, runs: dict[str, list[dict]], title: str) -> str:
    """The study's figure for several losses side by side: accuracy on the noisy training labels (dashed) and clean
    test accuracy (solid) per epoch — memorisation shows as the first rising while the second falls."""
    fig, ax = subplots(figsize=(6.5, 4.2))
    for i, (name, epochs) in enumerate(runs.items()):
        x = [e["epoch"] for e in epochs]
        c = f"C{i}"
        ax.plot(x, [100 * e["train_acc_noisy"] for e in epochs], "--", color=c, label=f"{name}: train, noisy labels")
        ax.plot(x, [100 * e["test_acc"] for e in epochs], "-", color=c, marker=".", label=f"{name}: test (clean)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    return _finish(fig, ax, Path(path))


def _finish(fig, ax, path: Path) -> str:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def plot_risk_coverage(run_dir: Path, curves: dict[str, dict]) -> str:
    fig, ax = subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        ax.plot([100 * v for v in c["coverage"]], [100 * v for v in c["risk"]], label=name)
    ax.set_xlabel("coverage (%)")
    ax.set_ylabel("selective risk (%)")
    ax.set_xlim(50, 100)
    return _finish(fig, ax, RunDir(run_dir).plot(RunDir.RISK_COVERAGE_PLOT))
