"""Types and the progress callback shared by the natural-image RTify modules."""

from __future__ import annotations

from typing import Literal

from perceptalign.callbacks import PhaseCallback as Progress

Decider = Literal["rtify", "wong-wang"]
PenaltyKind = Literal["margin", "tau", "p_correct"]


def report_progress(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` (stage, done, total) when one was given; library code never prints."""
    if progress is not None:
        progress(stage, done, total)
