"""Progress of a long produce on stderr, drawn by ``rich``: count, rate, elapsed time, ETA.

On a terminal the bar is redrawn in place; otherwise ``rich`` prints it once, when
the work ends. With ``enabled=False`` nothing is printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Messages per second, over ``rich``'s recent-speed window."""

    def render(self, task: Task) -> Text:
        """``12,345 msg/s``, or ``- msg/s`` before the first update."""
        speed = task.finished_speed or task.speed
        text = "- msg/s" if speed is None else f"{speed:,.0f} msg/s"
        return Text(text, style="progress.data.speed")


@contextlib.contextmanager
def counting(
    description: str, total: int | None = None, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A progress bar for ``total`` messages (None: unknown); yields ``update(done_so_far)``."""
    columns: list[ProgressColumn | str] = [TextColumn("[progress.description]{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    else:
        columns += [TextColumn("{task.completed:,.0f}")]
    columns += [RateColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)
