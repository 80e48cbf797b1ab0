"""Readers that validate as they go; every problem is reported as `file:line: what`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fairstamp.data.validate import (
    check_text_length,
    max_line_bytes,
    max_sentence_tokens,
    require_str,
)
from fairstamp.errors import DataError


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def _check_file(p: Path) -> None:
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a file")


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file (a BOM is dropped), with `file: problem` errors."""
    p = Path(path)
    _check_file(p)
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 ({exc.reason})") from None


def _open_lines(path: str | Path) -> tuple[str, IO[bytes]]:
    if str(path) == "-":
        return display_name(path), sys.stdin.buffer
    p = Path(path)
    _check_file(p)
    return str(p), open(p, "rb")


def _iter_lines(path: str | Path) -> Iterator[tuple[str, int, str]]:
    """(display name, 1-based line number, decoded line without its newline)."""
    name, handle = _open_lines(path)
    limit = max_line_bytes()
    try:
        number = 0
        while raw := handle.readline(limit + 1):
            number += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise DataError(f"{name}:{number}: line longer than {limit:,} bytes, refused "
                                f"unread (sentences are limited to {max_sentence_tokens()} "
                                f"tokens; --max-sentence-tokens)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{name}:{number}: not valid UTF-8 ({exc.reason})") from None
            yield name, number, line.rstrip("\r\n")
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def parse_object(name: str, number: int, line: str) -> dict[str, Any]:
    """One JSON Lines record, which must be an object."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at column {exc.colno}"
        raise DataError(f"{name}:{number}: invalid JSON ({where})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}:{number}: expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(display name, line number, object) for each non-blank line of a JSON Lines file.

    Raises DataError for invalid JSON, a value that is not an object, or a file with no records.
    """
    count = 0
    name = display_name(path)
    for name, number, line in _iter_lines(path):
        if not line.strip():
            continue
        count += 1
        yield name, number, parse_object(name, number, line)
    if count == 0:
        raise DataError(f"{name}: no records (the file is empty)")


@dataclass
class SentenceRecord:
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # `file:line`, for messages


def read_sentences(path: str | Path) -> list[SentenceRecord]:
    """Sentences to score, one per line.

    A `.jsonl` file (or any file whose first non-blank line starts with `{`) holds objects with a
    string field `text`; other fields are passed through to the output. Any other file is plain
    text: each non-blank line is one sentence.
    """
    lines = list(_iter_lines(path))
    name = display_name(path)
    first = next((line for _, _, line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{name}: no sentences (the file is empty)")
    as_json = str(path).endswith(".jsonl") or first.lstrip().startswith("{")
    records: list[SentenceRecord] = []
    for _, number, line in lines:
        if not line.strip():
            continue
        if not as_json:
            records.append(SentenceRecord(check_text_length(line.strip(), f"{name}:{number}"),
                                          where=f"{name}:{number}"))
            continue
        obj = parse_object(name, number, line)
        text = require_str(obj, "text", f"{name}:{number}")
        del obj["text"]
        records.append(SentenceRecord(text, obj, where=f"{name}:{number}"))
    return records
