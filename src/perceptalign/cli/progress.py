"""The CLI's rich progress bars: one layout for every long job, rates for streaming, one bar per phase."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from perceptalign.callbacks import PhaseStatusCallback


def progress_bar(
    console: Console, *, label: str = "{task.description}", field: str | None = None, remaining: bool = False
) -> Progress:
    """The project's bar layout: bold label, bar, done/total, an optional free-text ``task.fields[field]``
    column, elapsed time and (``remaining``) an estimate of the time left."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if field is not None:
        columns.append(TextColumn(f"{{task.fields[{field}]}}"))
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console)


class RateProgress:
    """Context manager: ``start(total)`` once the size is known, then ``advance(items, tokens)`` per batch."""

    def __init__(self, console: Console, description: str, unit: str = "texts") -> None:
        self.unit = unit
        self._progress = progress_bar(console, field="rates", remaining=True)
        self._description = description
        self._task: int | None = None
        self._tokens = 0
        self._items = 0
        self._t0 = time.perf_counter()

    def __enter__(self) -> RateProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def start(self, total: int) -> None:
        self._t0 = time.perf_counter()
        self._task = self._progress.add_task(self._description, total=total, rates="")

    def advance(self, items: int, tokens: int = 0) -> None:
        if self._task is None:
            self.start(0)
        self._items += items
        self._tokens += tokens
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rates = f"{self._items / elapsed:.1f} {self.unit}/s"
        if self._tokens:
            rates += f" {self._tokens / elapsed:.0f} tokens/s"
        self._progress.update(self._task, advance=items, rates=rates)


"""``update(phase, done, total, status)``: the progress callback of the RTify fitting jobs."""


def phase_progress(console: Console, label_width: int = 13) -> tuple[Progress, PhaseStatusCallback]:
    """One bar per named phase (created on its first update), with a free-text status column."""
    progress = progress_bar(console, label=f"{{task.description:<{label_width}}}", field="status")
    bars: dict[str, int] = {}

    def update(phase: str, done: int, total: int, status: str) -> None:
        if phase not in bars:
            bars[phase] = progress.add_task(phase, total=total, status="")
        progress.update(bars[phase], completed=done, total=total, status=status)

    return progress, update
