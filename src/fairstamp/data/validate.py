"""Checks shared by every BiaScope loader, so that they all word their errors the same way.

Each check takes `where`, the location that starts the message: `file:line` for line-based files
(JSON Lines, CSV), or `file: intrasentence[12] (id abc)` inside one JSON document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from fairstamp.errors import DataError

T = TypeVar("T")


def type_name(value: Any) -> str:
    """`a list`, `an int`: the JSON-ish type of a value, for messages."""
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def require_str(obj: Mapping[str, Any], field: str, where: str) -> str:
    """The value of a required, non-blank string field."""
    value = obj.get(field)
    if value is None:
        raise DataError(f"{where}: field '{field}' is missing")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' is {type_name(value)}, not a string")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def optional_str(obj: Mapping[str, Any], field: str, where: str) -> str | None:
    """Like `require_str`, but an absent field (or JSON null) gives None."""
    return None if obj.get(field) is None else require_str(obj, field, where)


def require_int(obj: Mapping[str, Any], field: str, where: str) -> int:
    """The value of a required integer field (a bool is not an integer here)."""
    value = obj.get(field)
    if value is None:
        raise DataError(f"{where}: field '{field}' is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: field '{field}' is {type_name(value)}, not an integer")
    return value


def require_list(obj: Mapping[str, Any], field: str, where: str) -> list[Any]:
    value = obj.get(field)
    if value is None:
        raise DataError(f"{where}: field '{field}' is missing")
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{field}' is {type_name(value)}, not a list")
    return value


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def check_bias_type(value: str, valid: Iterable[str], where: str) -> str:
    valid = tuple(valid)
    if value not in valid:
        raise DataError(f"{where}: unknown bias_type {value!r} (valid: {', '.join(valid)})")
    return value


def check_distinct(first: str, second: str, where: str,
                   what: str = "its two sentences are identical") -> None:
    """A pair whose two sentences are the same carries no contrast to measure or edit."""
    if first.strip() == second.strip():
        raise DataError(f"{where}: {what}")


class IdTracker:
    """Remembers where each id was first seen, so a duplicate names both places."""

    def __init__(self, what: str = "id") -> None:
        self.what = what
        self._first: dict[str, str] = {}

    def add(self, item_id: str, where: str, at: str) -> None:
        """Record `item_id`, seen at `at` (e.g. `line 3`); a second sighting is an error."""
        first = self._first.setdefault(item_id, at)
        if first != at:
            raise DataError(f"{where}: duplicate {self.what} {item_id!r} (first seen at {first})")


def require_records(records: Sequence[T], name: str, what: str = "records") -> Sequence[T]:
    """An empty set would make every metric 0/0: fail early, naming the file."""
    if not records:
        raise DataError(f"{name}: no {what} (the file is empty)")
    return records


def check_bias_type_filter(bias_types: Sequence[str] | str | None, valid: Sequence[str],
                           source: str) -> frozenset[str] | None:
    """Validate a user's `bias_types=` filter before any file is read."""
    if bias_types is None:
        return None
    if isinstance(bias_types, str):
        bias_types = [bias_types]
    if not bias_types:
        raise DataError(f"bias_types is empty: name some {source} bias types "
                        f"({', '.join(valid)}), or pass None for all")
    unknown = [b for b in bias_types if b not in valid]
    if unknown:
        raise DataError(f"unknown {source} bias type(s) {', '.join(map(repr, unknown))} "
                        f"(valid: {', '.join(valid)})")
    return frozenset(bias_types)


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def select(items: list[T], name: str, *, bias_types: frozenset[str] | None,
           limit: int | None) -> list[T]:
    """Filter by bias type (an already validated filter), keep the first `limit` in file order,
    and refuse an empty result."""
    require_records(items, name, "items")
    if bias_types is not None:
        items = [item for item in items if item.bias_type in bias_types]  # type: ignore[attr-defined]
        if not items:
            raise DataError(f"{name}: no items of bias type(s) {', '.join(sorted(bias_types))}")
    return items[:limit] if limit is not None else items
