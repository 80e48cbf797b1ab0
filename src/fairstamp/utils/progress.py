"""Progress bars for long work, drawn on stderr with rich, shown only when a person is watching."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class Advance(Protocol):
    def __call__(self, n: int = 1, *, status: str | None = None) -> None: ...


def progress_enabled(requested: bool | None) -> bool:
    """`None` means: show a bar when stderr is a terminal."""
    if requested is not None:
        return requested
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Advance]:
    """Yield an `advance(n, status=...)` callable; draws a bar (with ETA and the latest status
    text, e.g. live loss terms) if enabled."""
    if not progress_enabled(enabled) or total <= 0:
        yield lambda n=1, status=None: None
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
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, *, status: str | None = None) -> None:
            if status is not None:
                progress.update(task, status=status)
            progress.advance(task, n)

        yield advance
