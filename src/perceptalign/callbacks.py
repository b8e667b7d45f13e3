"""The callback types through which library jobs report progress; the CLI turns them into status lines and
progress bars (library code never prints).

Defined once here so that every job of both wings speaks the same signatures.
"""

from __future__ import annotations

from collections.abc import Callable

StatusCallback = Callable[[str], None]
"""A one-line status message (e.g. ``"loading model smollm2-135m"``)."""

BatchCallback = Callable[[int, int], None]
"""After each batch of a pass over texts: (texts in the batch, real tokens in the batch)."""

PhaseCallback = Callable[[str, int, int], None]
"""Progress of a named phase: (phase, done, total)."""

PhaseStatusCallback = Callable[[str, int, int, str], None]
"""Progress of a named phase with a free-text status: (phase, done, total, status)."""

StepCallback = Callable[[int, int, float], None]
"""Progress of one loop with the number it is tracking: (done, total, value), e.g. (step, steps, loss) of a
training run or (trials, total trials, current coherence) of a simulation sweep."""

__all__ = ["BatchCallback", "PhaseCallback", "PhaseStatusCallback", "StatusCallback", "StepCallback"]
