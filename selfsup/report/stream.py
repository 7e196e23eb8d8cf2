"""Plots and tables of streamed runs: accuracy vs chunk for every strategy on one chart, accuracy matrices as heat
maps, and the sequence study's summary table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import subplots


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
        fig.savefig(out_dir / "accuracy_vs_chunk.png", dpi=110)
        written.append("accuracy_vs_chunk.png")
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
