"""The files of a neighbour search: ``neighbours.png`` (one row per query: the query, then its nearest images with
their similarity and file name), ``neighbours.csv`` (query, query_class, query_split, rank, id, class, split,
similarity) and ``duplicates.csv`` (id_a, class_a, split_a, id_b, class_b, split_b, similarity, most similar first),
each written atomically; class and split are empty where unknown (split: a folder laid out as train/ + test/)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_bytes, atomic_write_text
from .neighbours import NeighbourSearch
from ..report.figures import subplots

GRID_ROWS = 64
"""At most this many queries are drawn in neighbours.png (neighbours.csv lists them all)."""


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _short(item_id: str, width: int = 18) -> str:
    """The file name of an item (its id without folders), cut from the left to ``width`` characters."""
    name = item_id.rsplit("/", 1)[-1]
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _show(ax, image: torch.Tensor) -> None:
    img = image.numpy()
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.transpose(img[:3], (1, 2, 0)))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_neighbour_grid(path: str | Path, r: NeighbourSearch, max_rows: int = GRID_ROWS) -> int:
    """Draw the grid; returns how many query rows it shows."""
    rows = min(len(r.query_ids), max_rows)
    cols = r.idx.shape[1] + 1
    fig, axes = subplots(rows, cols, figsize=(1.35 * cols + 0.3, 1.55 * rows + 0.5), squeeze=False)
    for q in range(rows):
        ax = axes[q][0]
        _show(ax, r.query_images[q])
        ax.set_title("query", fontsize=7, pad=2, color="#2166ac")
        ax.set_xlabel(_short(r.query_ids[q]), fontsize=6, color="#2166ac")
        for c, (i, s) in enumerate(zip(r.idx[q].tolist(), r.sims[q].tolist()), start=1):
            ax = axes[q][c]
            _show(ax, r.images[i])
            ax.set_title(f"{s:.3f}", fontsize=7, pad=2, color="#d73027" if s >= r.threshold else "black")
            ax.set_xlabel(_short(r.ids[i]), fontsize=6)
    fig.suptitle(f"nearest images by cosine similarity (query left, similarity above, file below; red: ≥ "
                 f"{r.threshold:g}, a near-duplicate)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return rows


def write_neighbours(r: NeighbourSearch, out_dir: str | Path) -> dict[str, Path]:
    """``neighbours.png``, ``neighbours.csv`` and ``duplicates.csv`` in ``out_dir`` (created); their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("neighbours.png", "neighbours.csv", "duplicates.csv")}
    atomic_write_text(paths["neighbours.csv"], _csv_text(
        ["query", "query_class", "query_split", "rank", "id", "class", "split", "similarity"],
        ([r.query_ids[q], *r.row_facts(r.query_index[q]), rank, r.ids[i], *r.row_facts(i), f"{s:.6f}"]
         for q in range(len(r.query_ids))
         for rank, (i, s) in enumerate(zip(r.idx[q].tolist(), r.sims[q].tolist()), start=1))))
    atomic_write_text(paths["duplicates.csv"], _csv_text(
        ["id_a", "class_a", "split_a", "id_b", "class_b", "split_b", "similarity"],
        ([r.ids[i], *r.row_facts(i), r.ids[j], *r.row_facts(j), f"{s:.6f}"] for i, j, s in r.duplicates)))
    plot_neighbour_grid(paths["neighbours.png"], r)
    return paths
