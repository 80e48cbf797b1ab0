"""Checks shared by every BiaScope loader, so that they all word their errors the same way.

Each check takes `where`, the location that starts the message: `file:line` for line-based files
(JSON Lines, CSV), or `file: intrasentence[12] (id abc)` inside one JSON document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from fairstamp.errors import DataError

T = TypeVar("T")

#: The longest sentence, in tokens, that commands accept (well under every supported model's
#: context); `--max-sentence-tokens` or `sentence_length_limit` change it.
DEFAULT_MAX_SENTENCE_TOKENS = 512
#: While reading, before any tokenizer is involved, a text longer than this many characters per
#: allowed token is refused (no tokenizer of the supported families has longer tokens), so that a
#: huge record never reaches a tokenizer or a batch.
CHARS_PER_TOKEN = 32
#: ... but never below this many characters (the general-ability sets hold passages of ~5k).
MIN_TEXT_CHARS = 8192
#: A line of a line-based file may hold several texts: at most this many times one text's bytes.
LINE_FACTOR = 64

_MAX_TOKENS: ContextVar[int] = ContextVar("fairstamp_max_sentence_tokens",
                                          default=DEFAULT_MAX_SENTENCE_TOKENS)


def max_sentence_tokens() -> int:
    """The sentence length limit in force, in tokens."""
    return _MAX_TOKENS.get()


def max_text_chars() -> int:
    """The longest text field a reader accepts, in characters (from the token limit)."""
    return max(MIN_TEXT_CHARS, CHARS_PER_TOKEN * max_sentence_tokens())


def max_line_bytes() -> int:
    """The longest line a line-based reader reads, in bytes; a longer one is refused unread."""
    return LINE_FACTOR * max_text_chars()


@contextmanager
def sentence_length_limit(max_tokens: int) -> Iterator[None]:
    """Read (and check) with another sentence length limit for the block."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    token = _MAX_TOKENS.set(max_tokens)
    try:
        yield
    finally:
        _MAX_TOKENS.reset(token)


def check_text_length(value: str, where: str, what: str = "the sentence") -> str:
    """Refuse a text too long to be a sentence, from its length alone (no tokenizer)."""
    limit = max_text_chars()
    if len(value) > limit:
        raise DataError(f"{where}: {what} is {len(value):,} characters long, over the limit of "
                        f"{limit:,} for a sentence of at most {max_sentence_tokens()} tokens "
                        f"(--max-sentence-tokens)")
    return value


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
    return check_text_length(value, where, f"field '{field}'")


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
