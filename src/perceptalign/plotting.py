"""Figures as objects, saved atomically: the one way every job writes a figure.

Figures are built as :class:`matplotlib.figure.Figure` objects (no pyplot state, no display, and the
user's matplotlib backend is never switched); :func:`save_figure` writes one through a temporary file
renamed into place, so an interrupted run never leaves a truncated image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from perceptalign.io import PerceptAlignError, atomic_path

#: Formats :func:`save_figure` writes (from the file suffix).
SAVE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
DEFAULT_DPI = 150


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """``pyplot.subplots`` without pyplot: a new Figure and its axes (same arguments, same return)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise PerceptAlignError(
            f"cannot save a figure as {path.name!r}: use one of the suffixes {list(SAVE_FORMATS)}."
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix.lstrip(".").replace("jpg", "jpeg"), dpi=dpi, bbox_inches="tight")
    return path


__all__ = ["DEFAULT_DPI", "SAVE_FORMATS", "save_figure", "subplots"]
