"""Edit / held-out splits that never leak a target across the line.

All items of one (bias_type, target) go to the same side, decided by a stable hash of the seed
and that key alone. So the split does not depend on item order or on which other items are
present, and is the same on every run and machine. "Held-out" therefore means *targets never
edited*: the generalisation score asks whether an edit carries over to other biases of the same
bias type about other groups. The held-out share of items is `held_out_fraction` only on
average, since whole targets move together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from fairstamp.data.items import BiasItem

T = TypeVar("T")
Key = str | tuple[str, ...]


def target_key(item: BiasItem) -> tuple[str, str]:
    """The default group key: bias type and target."""
    return item.bias_type, item.target


def _normalise(part: str) -> str:
    return " ".join(str(part).casefold().split())


def is_held_out(key: Key, *, held_out_fraction: float = 0.2, seed: int = 0) -> bool:
    """Whether the group `key` (e.g. `("race", "Ethiopian")`) is on the held-out side."""
    parts = (key,) if isinstance(key, str) else tuple(key)
    text = "\x1f".join([str(seed), *map(_normalise, parts)])
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return value < held_out_fraction * 2**64


def targets_by_type(items: Iterable[BiasItem]) -> dict[str, list[tuple[str, str]]]:
    """Each bias type's distinct target keys (`target_key`), in order of first appearance."""
    by_type: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        key = target_key(item)
        if key not in by_type.setdefault(item.bias_type, []):
            by_type[item.bias_type].append(key)
    return by_type


def hashed_order(keys: Iterable[tuple[str, str]], *, seed: int = 0, salt: str = ""
                 ) -> list[tuple[str, str]]:
    """Target keys in a stable order hashed from the seed and each key (and `salt`, so that two
    uses of one seed draw independently); the same on every run and machine."""
    head = [salt] if salt else []
    return sorted(keys, key=lambda key: hashlib.sha256("\x1f".join(
        [*head, str(seed), key[0], key[1].casefold()]).encode()).hexdigest())


def split_by_target(items: Iterable[T], *, held_out_fraction: float = 0.2, seed: int = 0,
                    key: Callable[[T], Key] | None = None) -> tuple[list[T], list[T]]:
    """(edit, held_out), each in input order. `key` maps an item to its group (default: the
    BiasItem's bias type and normalised target; e.g. `lambda r: (r.bias_type, r.group)` for
    retention items)."""
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    key = key or target_key  # type: ignore[assignment]
    edit: list[T] = []
    held_out: list[T] = []
    decided: dict[Key, bool] = {}
    for item in items:
        group = key(item)
        if group not in decided:
            decided[group] = is_held_out(group, held_out_fraction=held_out_fraction, seed=seed)
        (held_out if decided[group] else edit).append(item)
    return edit, held_out
