"""Retrieval grid: a few seeded test queries and their nearest test neighbours by cosine similarity of the encoder's
features (``retrieval.png``) — what the encoder considers similar, at a glance."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes
from ..evaluate.search import nearest
from .results import EvaluatedTestSet
from ..rundir import RunDir

SAME, DIFFERENT = "#1a9850", "#d73027"  # neighbour border: same class as the query / another class


def nearest_neighbours(features: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """(len(queries), k) indices into ``features`` of each query's k most cosine-similar rows, most similar first;
    a query is never its own neighbour (the collection search of ``selfsup neighbours``)."""
    queries = torch.as_tensor(queries, dtype=torch.long)
    return nearest(features, features[queries], k, exclude_self=queries)[1]


def pick_queries(n_items: int, n_queries: int, seed: int) -> torch.Tensor:
    """``n_queries`` distinct indices drawn with ``seed`` (sorted, so the grid's rows do not depend on the draw
    order)."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.sort(rng.choice(n_items, min(n_queries, n_items), replace=False)))


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _tile(image: torch.Tensor, scale: int) -> np.ndarray:
    """(H*scale, W*scale, 3) uint8: the image enlarged by pixel repetition, grey images as RGB."""
    img = image.numpy()
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return np.transpose(img, (1, 2, 0)).repeat(scale, 0).repeat(scale, 1)


def _name(label: int, classes: list[str]) -> str:
    name = classes[label] if label < len(classes) else str(label)
    return name if len(name) <= 12 else name[:11] + "…"


QUERY = "#2166ac"
BORDER, GAP, QUERY_GAP, LABEL, MARGIN, TOP = 4, 10, 22, 26, 12, 40  # pixels: frame, gaps, caption band, margins


def plot_retrieval(run_dir: Path, test: EvaluatedTestSet, images: torch.Tensor, seed: int, n_queries: int = 8,
                   k: int = 6, name: str = RunDir.RETRIEVAL_PLOT) -> str | None:
    """``retrieval.png``: one row per query (left, blue frame) followed by its ``k`` nearest neighbours among
    ``test.features`` (``images``: the images they are the features of); with labels, each image is captioned with
    its class and each neighbour framed green (same class as the query) or red. Drawn as one mosaic (one axes), so
    it stays fast for any number of tiles. Returns the file name, or None when there are too few images to retrieve
    from."""
    features, labels = test.features, test.labels
    if len(features) < 2 or len(features) != len(images):
        return None
    queries = pick_queries(len(features), n_queries, seed)
    nn_idx = nearest_neighbours(features, queries, k)
    canvas, captions = _mosaic(images, [[q] + nn_idx[r].tolist() for r, q in enumerate(queries.tolist())], labels,
                               test.classes)
    dpi = 100
    fig = Figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text, bold in captions:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7, linespacing=1.1,
                fontweight="bold" if bold else "normal")
    ax.text(canvas.shape[1] / 2, TOP / 2, f"query (blue frame), then its {nn_idx.shape[1]} nearest test neighbours by "
            "cosine similarity" + ("\nframe: green = same class as the query, red = another class"
                                   if labels is not None else ""), ha="center", va="center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(RunDir(run_dir).plot(name), buf.getvalue())
    return name


def _mosaic(images: torch.Tensor, rows: list[list[int]], labels: torch.Tensor | None,
            classes: list[str]) -> tuple[np.ndarray, list[tuple[float, int, str, bool]]]:
    """The grid's pixels (one row of tiles per entry of ``rows``: the query's index, then its neighbours') and its
    captions (x, y, text, bold)."""
    cols = len(rows[0])
    h, w = images.shape[-2:]
    scale = -(-84 // max(h, w))  # tiles of 84 to 167 pixels
    th, tw = h * scale + 2 * BORDER, w * scale + 2 * BORDER
    cell_h = th + LABEL + GAP
    x0 = [MARGIN] + [MARGIN + tw + QUERY_GAP + (c - 1) * (tw + GAP) for c in range(1, cols)]
    canvas = np.full((TOP + len(rows) * cell_h, x0[-1] + tw + MARGIN, 3), 255, dtype=np.uint8)
    captions = []
    for r, row in enumerate(rows):
        q = row[0]
        for c, i in enumerate(row):
            y, x = TOP + r * cell_h + LABEL, x0[c]
            color = QUERY if c == 0 else ("#8c959f" if labels is None else
                                          SAME if int(labels[i]) == int(labels[q]) else DIFFERENT)
            canvas[y:y + th, x:x + tw] = _rgb(color)
            canvas[y + BORDER:y + th - BORDER, x + BORDER:x + tw - BORDER] = _tile(images[i], scale)
            text = _name(int(labels[i]), classes) if labels is not None else ""
            if c == 0:
                text = f"query\n{text}" if text else "query"
            if text:
                captions.append((x + tw / 2, y - 3, text, c == 0))
    return canvas, captions
