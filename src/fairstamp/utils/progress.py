"""Progress bars for long work, drawn on stderr with rich, shown only when a person is watching."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None: ...


def progress_enabled(requested: bool | None) -> bool:
    """`None` means: show a bar when stderr is a terminal."""
    if requested is not None:
        return requested
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Advance]:
    """Yield an `advance(n)` callable; draws a bar (with rate and ETA) if enabled."""
    if not progress_enabled(enabled) or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
