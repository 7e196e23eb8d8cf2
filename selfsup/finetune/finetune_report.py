"""Plots of classifier fine-tuning: accuracy on the (noisy) training labels vs test accuracy per epoch, and
risk-coverage curves of selective classification; and the fine-tuning section of ``report.html`` (registered when
this module is imported; see :mod:`selfsup.report.sections`)."""
from __future__ import annotations

from pathlib import Path

from ..report.figures import subplots
from ..number_format import pct
from ..report.html_parts import file_figure, grid, join_parts, table
from ..report.sections import HeaderFacts, RunContents, Section, register_section
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


# ------------------------------------------------------------------------------------------------ report section
def _finetune(run: RunContents) -> str:
    f = run.data(RunDir.FINETUNE)
    if f is None:
        return ""
    labels = (("actual_label_error", "actual label error (training labels)"),
              ("test_acc_last", "test accuracy, last epoch"),
              ("test_acc_at_best_val", "test accuracy at the best validation epoch"),
              ("test_acc_max", "best test accuracy over epochs (optimistic)"))
    rows = [[name, pct(f[k])] for k, name in labels if f.get(k) is not None]
    if f.get("best_val_epoch") is not None:
        rows.append(["best validation epoch", f"{f['best_val_epoch']:g}"])
    if f.get("init"):
        rows.append(["encoder initialised from", str(f["init"])])
    parts = [table(["metric", "value"], rows, cls="finetune") if rows else "",
             grid([file_figure(run.path, RunDir.CURVES_PLOT, "accuracy per epoch"),
                    file_figure(run.path, RunDir.RISK_COVERAGE_PLOT, "risk-coverage (selective classification)")])]
    sel = f.get("selective") or {}
    scorers = [s for s in ("abstain", "softmax_response") if s in sel]
    if scorers:
        table_rows = [[f"{100 * cells[0]['target_coverage']:.0f} %",
                       *[v for c in cells for v in (pct(c["test_coverage"], 1), pct(c["selective_risk"]))]]
                      for cells in zip(*[sel[s]["table"] for s in scorers])]
        table_rows.append(["AURC (×10⁻³)", *[v for s in scorers for v in ("", f"{1000 * sel[s]['aurc']:.2f}")]])
        header = ["target coverage"] + [f"{s}: {h}" for s in scorers for h in ("test coverage", "selective risk")]
        parts.append("<h3>Selective classification (thresholds chosen on the validation split)</h3>"
                     + table(header, table_rows, cls="selective"))
    return join_parts(*parts)


def _header_facts(f: dict) -> HeaderFacts:
    facts = [("loss", f.get("loss", "?"))]
    if f.get("noise") not in (None, "none"):
        facts.append(("label noise", f"{f['noise']} {pct(f.get('noise_rate'), 0)}"))
    if f.get("train_seconds") is not None:
        facts.append(("training time", f"{f['train_seconds']:.0f} s"))
    if f.get("images_per_second"):
        facts.append(("img/s", f"{f['images_per_second']:.0f}"))
    encoder = "from " + Path(f["init"]).name if f.get("init") else "random init"
    return HeaderFacts(kind="fine-tuning", trained=("encoder", encoder), facts=tuple(facts))


class FinetuneSection(Section):
    """A fine-tuning run (``finetune.json``): its accuracies, curves and selective classification; in the header,
    the encoder it started from (in place of the config's SSL method, which it does not train), loss, label noise,
    time and throughput."""
    id, title, order, rank = "finetune", "Fine-tuning", 80, 1
    files = (RunDir.FINETUNE,)

    def applies(self, run: RunContents) -> bool:
        return run.data(RunDir.FINETUNE) is not None

    def render(self, run: RunContents) -> str:
        return _finetune(run)

    def header(self, run: RunContents) -> HeaderFacts:
        return _header_facts(run.data(RunDir.FINETUNE))


register_section(FinetuneSection())
