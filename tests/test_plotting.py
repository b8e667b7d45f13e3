"""The one figure writer: atomic, format from the suffix, no pyplot state."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.plotting import save_figure, subplots


def test_save_figure_writes_atomically_in_the_suffix_format(tmp_path: Path) -> None:
    fig, ax = subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "line.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    save_figure(fig, tmp_path / "line.pdf")
    assert (tmp_path / "line.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(PerceptAlignError, match="suffixes"):
        save_figure(fig, tmp_path / "line.bmp")


def test_subplots_leave_pyplot_and_the_backend_alone() -> None:
    backend = matplotlib.get_backend()
    fig, axes = subplots(1, 2, squeeze=False)
    assert axes.shape == (1, 2) and not hasattr(fig, "number")  # not registered with pyplot
    assert matplotlib.get_backend() == backend
