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

__all__ = ["BatchCallback", "PhaseCallback", "StatusCallback"]
