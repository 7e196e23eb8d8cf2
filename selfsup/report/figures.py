"""Figures on matplotlib's object API: no pyplot, so no global backend is chosen and no figure outlives its plot."""
from __future__ import annotations

from matplotlib import colormaps
from matplotlib.figure import Figure


def subplots(*args, figsize=None, **kw):
    """Like ``pyplot.subplots``: a new Figure and its axes."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kw)


def get_cmap(name: str):
    return colormaps[name]
