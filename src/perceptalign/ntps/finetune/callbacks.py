"""Progress and status callbacks of the training jobs (the CLI turns them into bars and lines)."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)``: ``done = 0`` when a phase starts, then after each unit."""

StatusCallback = Callable[[str], None]
