"""Plots and tables of streamed runs: accuracy vs chunk for every strategy on one chart, accuracy matrices as heat
maps, the sequence study's summary table, and the stream and sequence-study sections of ``report.html`` (registered
when this module is imported; see :mod:`selfsup.report.sections`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..report.figures import subplots
from ..number_format import pct
from ..report.html_parts import escape, file_figure, grid, join_parts, table
from ..report.sections import HeaderFacts, RunContents, Section, register_section
from ..rundir import RunDir


def plot_stream(out_dir: Path, manifests: dict[str, dict], title: str = "stream") -> list[str]:
    """``accuracy_vs_chunk.png`` (linear probe and kNN on the full test set after each chunk; chunk 0 = random
    init) and ``R_<strategy>.png`` heat maps of the per-task linear accuracy matrix."""
    out_dir = Path(out_dir)
    written = []
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    any_line = False
    for strat, man in manifests.items():
        for ax, key in zip(axes, ("linear", "knn")):
            xs, ys = [], []
            if key in man.get("init_eval", {}):
                xs.append(0)
                ys.append(100 * man["init_eval"][key])
            for i, c in enumerate(man.get("chunks", [])):
                if key in c.get("eval", {}):
                    xs.append(i + 1)
                    ys.append(100 * c["eval"][key])
            if len(xs) > 0:
                any_line = True
                ax.plot(xs, ys, marker="o", label=strat, linestyle="--" if strat == "joint" else "-")
    if any_line:
        for ax, key in zip(axes, ("linear probe", "kNN")):
            ax.set_xlabel("chunks trained (0 = random init)")
            ax.set_ylabel(f"{key} accuracy, full test set (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / RunDir.CHUNK_ACCURACY_PLOT, dpi=110)
        written.append(RunDir.CHUNK_ACCURACY_PLOT)
    for strat, man in manifests.items():
        init = man.get("init_eval", {})
        rows = [c.get("eval", {}).get("task_linear") for c in man.get("chunks", [])]
        if "task_linear" not in init or not rows or any(r is None for r in rows):
            continue
        R = 100 * np.array([init["task_linear"]] + rows)
        fig, ax = subplots(figsize=(1.2 + 0.9 * R.shape[1], 1.0 + 0.7 * R.shape[0]))
        im = ax.imshow(R, cmap="viridis", aspect="auto")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, i, f"{R[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
        names = man.get("task_names") or [f"task {j + 1}" for j in range(R.shape[1])]
        ax.set_xticks(range(R.shape[1]), [n if len(n) <= 14 else n[:13] + "…" for n in names], rotation=30,
                      ha="right", fontsize=8)
        ax.set_yticks(range(R.shape[0]), ["init"] + [f"after {i}" for i in range(1, R.shape[0])])
        ax.set_title(f"R[i][j], linear probe (%) — {strat}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out_dir / f"R_{strat}.png", dpi=110)
        written.append(f"R_{strat}.png")
    return written


def _p(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


MIN_GAP = 0.005  # a joint − sequential gap below half a point is within the probes' noise: nothing to close


def gap_closed(per: dict, strat: str, key: str) -> str:
    """Share of the joint − sequential gap (probe ``key``: linear or knn) that ``strat`` closes."""
    joint, seq, r = per.get("joint", {}).get(key), per.get("sequential", {}).get(key), per.get(strat, {}).get(key)
    if joint is None or seq is None or r is None or strat in ("joint", "sequential"):
        return "—"
    if joint - seq < MIN_GAP:
        return "no gap"
    return f"{100 * (r - seq) / (joint - seq):.0f} %"


def sequence_table(results: dict) -> str:
    """Markdown: one row per (sequence, strategy) with the final accuracies, continual metrics, cost, and the share
    of the joint − sequential gap each strategy closes (linear probe and kNN; "no gap" when sequential is within
    half a point of joint or above it), then the gaps themselves."""
    lines = ["| sequence | strategy | linear % | kNN % | digits % | avg task acc % | forgetting | BWT | FWT | "
             "steps | train s | retained MB | gap closed, linear | gap closed, kNN |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gaps = []
    for kind, per in results.items():
        for strat, r in per.items():
            m = r.get("linear_metrics", {})
            lines.append(f"| {kind} | {strat} | {_p(r.get('linear'))} | {_p(r.get('knn'))} | "
                         f"{_p(r.get('digits_linear'))} | {_p(m.get('average_accuracy'))} | "
                         f"{_p(m.get('forgetting'))} | {_p(m.get('bwt'))} | {_p(m.get('fwt'))} | {r.get('steps', 0)} | "
                         f"{r.get('train_seconds', 0):.0f} | {r.get('retained_bytes', 0) / 1e6:.2f} | "
                         f"{gap_closed(per, strat, 'linear')} | {gap_closed(per, strat, 'knn')} |")
        j, q = per.get("joint", {}), per.get("sequential", {})
        if all(k in d for d in (j, q) for k in ("linear", "knn")):
            gaps.append(f"{kind}: linear {100 * (j['linear'] - q['linear']):+.2f}, "
                        f"kNN {100 * (j['knn'] - q['knn']):+.2f}")
    if gaps:
        lines += ["", "Joint − sequential (points): " + "; ".join(gaps) + "."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- several seeds
GAP_KEYS = ("all_tasks_linear", "linear", "knn")
"""Summary numbers whose joint − sequential gap a multi-seed study reports: linear probe on every task after the
last chunk (the mean of the accuracy matrix's last row), linear probe and kNN on the full clean test set."""

GAP_NAMES = {"all_tasks_linear": "linear, all tasks", "linear": "linear, full test set", "knn": "kNN, full test set"}


def pm(stats: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of a :func:`selfsup.streams.continual_metrics.mean_std` dict (× ``scale``), "—" when absent."""
    if not stats or stats.get("mean") is None:
        return "—"
    m, s = scale * stats["mean"], scale * (stats.get("std") or 0.0)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if stats.get("n", 1) > 1 else f"{m:.{digits}f}"


def gap_sentence(kind: str, key: str, g: dict) -> str:
    """One line: the joint − sequential gap of ``key`` on ``kind`` and what each strategy closes, or "no gap
    beyond noise" when it is not above twice its std (or there is a single seed)."""
    what = f"{kind}, {GAP_NAMES.get(key, key)}: joint − sequential {100 * g['gap']:+.2f} ± {100 * g['std']:.2f} " \
           f"points ({g['n']} seed{'s' if g['n'] != 1 else ''})"
    if not g["real"]:
        why = "one seed, no noise estimate" if g["n"] < 2 else "gap ≤ 2 std"
        return f"{what}: no gap beyond noise ({why})."
    closed = "; ".join(f"{s} closes {100 * c['share']:.0f} % ({100 * c['mean']:+.2f} ± {100 * c['std']:.2f} points "
                       f"over sequential" + (f", {c['n']} of the {g['n']} seeds" if c["n"] < g["n"] else "") + ")"
                       for s, c in g["closed"].items())
    return f"{what}: a gap beyond noise (> 2 std)" + (f"; {closed}." if closed else ".")


def _downstream_columns(aggregate: dict) -> list[tuple[str, str]]:
    keys = {k: None for per in aggregate.values() for r in per.values() for k in r["numbers"]
            if k.startswith("downstream.")}
    cols = []
    for k in keys:
        parts = k.split(".", 2)
        if parts[1] == "low_label":
            cols.append((k, f"{100 * float(parts[2]):g} % labels %"))
        elif parts[1] == "fewshot":
            cols.append((k, parts[2].replace("way_", "-way ").replace("shot", "-shot") + " %"))
    return cols


def seeds_table(study: dict) -> str:
    """Markdown of a multi-seed study (``{"seeds", "aggregate", "gaps"}``): one row per (sequence, strategy) with
    mean ± std over the seeds, then the gap lines (see :func:`gap_sentence`)."""
    agg = study["aggregate"]
    down = _downstream_columns(agg)
    head = ["sequence", "strategy", "linear, all tasks %", "linear %", "kNN %", "digits %", "forgetting", "BWT",
            "min CKA to previous", *[name for _, name in down], "steps", "train s", "retained MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, per in agg.items():
        for strat, r in per.items():
            n = r["numbers"]
            cells = [kind, strat, pm(n.get("all_tasks_linear")), pm(n.get("linear")), pm(n.get("knn")),
                     pm(n.get("digits_linear")), pm(n.get("linear_metrics.forgetting")),
                     pm(n.get("linear_metrics.bwt")), pm(n.get("cka_min"), 1, 3),
                     *[pm(n.get(k)) for k, _ in down], pm(n.get("steps"), 1, 0), pm(n.get("train_seconds"), 1, 0),
                     pm(n.get("retained_bytes"), 1e-6, 2)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean ± sample std over seeds {', '.join(str(s) for s in study['seeds'])}. linear, all tasks = "
                  "the linear probe on every task's test images after the last chunk (mean of the accuracy "
                  "matrix's last row); linear / kNN = the full clean test set; forgetting and BWT in points."]
    for kind, gaps in study.get("gaps", {}).items():
        for key, g in gaps.items():
            lines.append("- " + gap_sentence(kind, key, g))
    return "\n".join(lines)


def plot_seed_summary(path: Path, per_strategy: dict, title: str = "") -> list[str]:
    """Left: linear-probe accuracy on the tasks seen so far (mean of R[i][0..i]) after each chunk, one line per
    strategy, shaded ± std across seeds (a strategy measured only after the last chunk, joint by default, is a
    point with an error bar); right: CKA between the encoder after chunk t and after chunk t − 1 (full test set).
    ``per_strategy``: one sequence of :func:`selfsup.streams.continual_metrics.aggregate_seeds`. Returns the strategies
    drawn on the accuracy panel."""
    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4))
    drawn = []
    for n, (strat, r) in enumerate(per_strategy.items()):
        color = f"C{n}"  # one colour per strategy on both panels
        curve = r.get("curves", {}).get("seen_linear_curve")
        if not curve:
            continue
        pts = [(i + 1, 100 * c["mean"], 100 * c["std"]) for i, c in enumerate(curve) if c["mean"] is not None]
        if not pts:
            continue
        x, m, s = (np.array(v) for v in zip(*pts))
        style = "--" if strat == "joint" else "-"
        if len(x) == 1:
            ax.errorbar(x, m, yerr=s, marker="D", linestyle="none", capsize=4, label=strat, color=color)
        else:
            ax.plot(x, m, marker="o", linestyle=style, label=strat, color=color)
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
        drawn.append(strat)
        cka = r.get("curves", {}).get("cka_curve")
        cpts = [(i + 1, c["mean"], c["std"]) for i, c in enumerate(cka or []) if c["mean"] is not None]
        if len(cpts) > 0:
            cx, cm, cs = (np.array(v) for v in zip(*cpts))
            ax2.plot(cx, cm, marker="o", linestyle=style, label=strat, color=color)
            ax2.fill_between(cx, cm - cs, cm + cs, color=color, alpha=0.2)
    ax.set_xlabel("chunks trained")
    ax.set_ylabel("linear probe, tasks seen so far (%)")
    ax2.set_xlabel("chunks trained")
    ax2.set_ylabel("CKA to the previous chunk's encoder")
    ax2.axhline(0.8, color="grey", linewidth=0.8, linestyle=":")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax, ax2):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return drawn


# ---------------------------------------------------------------------------------------------- report sections
def _metrics_table(summary: dict) -> str:
    rows = []
    for probe in ("linear", "knn"):
        m = summary.get(f"{probe}_metrics")
        if m:
            rows.append([probe, *[("–" if m.get(k) is None else f"{100 * m[k]:.2f}")
                                  for k in ("average_accuracy", "forgetting", "bwt", "fwt")]])
    if not rows:
        return ""
    return ("<h3>Continual-learning metrics (points)</h3>"
            + table(["probe", "average task accuracy", "forgetting", "BWT", "FWT"], rows, cls="forgetting"))


def _stream(run: RunContents) -> str:
    man = run.data(RunDir.MANIFEST)
    if man is None:
        return ""
    parts = []
    chunks = man.get("chunks", [])
    if chunks:
        init = man.get("init_eval") or {}
        rows = []
        if init:
            rows.append(["0 (random init)", "", "", "", "", pct(init.get("linear")), pct(init.get("knn")), ""])
        for i, c in enumerate(chunks):
            ev = c.get("eval") or {}
            rows.append([str(i + 1), str(c.get("name", "")), str(c.get("images", "")), str(c.get("steps", "")),
                         f"{c.get('train_seconds', 0):.1f}", pct(ev.get("linear")), pct(ev.get("knn")),
                         f"{c.get('retained_bytes', 0) / 1e6:.2f}"])
        parts.append("<h3>Chunks (accuracy on the full test set after each)</h3>" + table(
            ["chunk", "name", "images", "steps", "train s", "linear probe", "kNN", "retained MB"], rows,
            cls="chunks"))
    rejected = man.get("rejected") or {}
    if rejected:
        parts.append("<h3>Rejected chunks</h3>" + table(
            ["chunk", "reason"], [[n, str(v.get("reason", ""))] for n, v in rejected.items()], cls="rejected"))
    parts.append(_metrics_table((run.data(RunDir.STREAM) or {}).get("summary") or {}))
    parts.append(file_figure(run.path, RunDir.CHUNK_ACCURACY_PLOT, "accuracy after each chunk"))
    parts.append(grid([file_figure(run.path, p.name, f"per-task accuracy matrix, {p.stem[2:]}")
                        for p in sorted(run.path.glob("R_*.png"))]))
    return join_parts(*parts)


def _markdown_table(md: str) -> str:
    """A markdown pipe table (and the lines after it) as HTML."""
    lines = md.splitlines()
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= {"-", ":"} for c in r)]
    rest = [ln for ln in lines if ln.strip() and not ln.startswith("|")]
    out = table(rows[0], rows[1:], cls="sequence") if rows else ""
    return out + "".join(f"<p class=\"note\">{escape(ln)}</p>" for ln in rest)


def _sequence(run: RunContents) -> str:
    study = run.data(RunDir.STUDY)
    if study is None:
        return ""
    if "aggregate" in study:  # selfsup sequence --seeds N: the aggregate over the seeds
        parts = [_markdown_table(seeds_table(study))]
        parts += [file_figure(run.path, p.name, f"{p.stem[8:]}: linear probe on the tasks seen so far and CKA to the "
                               f"previous chunk's encoder, mean ± std over the seeds")
                  for p in sorted(run.path.glob("summary_*.png"))]
        parts.append("<p class=\"note\">Each seed's own study: <code>seed&lt;S&gt;/report.html</code>.</p>")
        return join_parts(*parts)
    parts = [_markdown_table(sequence_table(study))]
    for kind in study:
        figs = [file_figure(run.path, f"{kind}/accuracy_vs_chunk.png", f"{kind}: accuracy after each chunk"),
                grid([file_figure(run.path, f"{kind}/{p.name}", f"{kind}: per-task accuracy matrix, {p.stem[2:]}")
                       for p in sorted((run.path / kind).glob("R_*.png"))])]
        if any(figs):
            parts.append(f"<h3>{escape(kind)} incremental</h3>" + "".join(figs))
    parts.append("<p class=\"note\">Each strategy's own report: <code>&lt;sequence&gt;/&lt;strategy&gt;/report.html"
                 "</code>.</p>")
    return join_parts(*parts)


class StreamSection(Section):
    """A stream run (``manifest.json``, ``stream.json``): the chunks, the rejected ones, the continual-learning
    metrics and the plots; the header's chunks, steps and time; a warning per rejected or skipped chunk."""
    id, title, order, rank = "stream", "Stream", 60, 2
    files = (RunDir.MANIFEST, RunDir.STREAM)

    def applies(self, run: RunContents) -> bool:
        return run.data(RunDir.MANIFEST) is not None or run.data(RunDir.STREAM) is not None

    def render(self, run: RunContents) -> str:
        return _stream(run)

    def warnings(self, run: RunContents) -> list[str]:
        man = run.data(RunDir.MANIFEST) or {}
        ws = [f"stream chunk {name} rejected (not trained): {why.get('reason', '?')}"
              for name, why in (man.get("rejected") or {}).items()]
        return ws + [f"stream chunk {c.get('name')}: skipped {c['skipped']}" for c in man.get("chunks", [])
                     if c.get("skipped")]

    def header(self, run: RunContents) -> HeaderFacts:
        summary = (run.data(RunDir.STREAM) or {}).get("summary")
        facts = ((("chunks", str(summary.get("chunks", 0))), ("steps", str(summary.get("steps", 0))),
                  ("training time", f"{summary.get('train_seconds', 0):.0f} s")) if summary else ())
        return HeaderFacts(kind="stream" if run.data(RunDir.MANIFEST) is not None else "", facts=facts)


class SequenceStudySection(Section):
    """The root of a sequence study (``sequence.json``): its summary table (one seed, or the aggregate over several)
    and each sequence's plots."""
    id, title, order, rank = "sequence", "Sequence study", 70, 3
    files = (RunDir.STUDY,)

    def applies(self, run: RunContents) -> bool:
        return run.data(RunDir.STUDY) is not None

    def render(self, run: RunContents) -> str:
        return _sequence(run)

    def header(self, run: RunContents) -> HeaderFacts:
        return HeaderFacts(kind="sequence study")


register_section(StreamSection())
register_section(SequenceStudySection())
