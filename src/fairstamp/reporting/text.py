"""Text helpers for tables: show a minimal pair by what differs."""

from __future__ import annotations

import os
import sys


def pair_diff(first: str, second: str) -> str:
    """`The nurse said [she | he] was late.`: shared words once, the differing span bracketed."""
    a, b = first.split(" "), second.split(" ")
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    mid_a = " ".join(a[head : len(a) - tail])
    mid_b = " ".join(b[head : len(b) - tail])
    parts = [*a[:head], f"[{mid_a} | {mid_b}]", *a[len(a) - tail :]]
    return " ".join(parts)


def console(stderr: bool = False):
    """A rich Console; 160 columns wide when writing to a file or pipe (rich would use 80)."""
    # rich on use, not on import: importing it draws from `random` (rich.style's link ids), and
    # importing fairstamp must leave every RNG as it was.
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, width=width)
