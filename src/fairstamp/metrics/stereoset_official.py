"""Predictions in the official StereoSet format, so that StereoSet's own evaluator
(`code/evaluation.py`) can check our numbers: `{"intrasentence": [{"id", "score"}, ...]}`."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fairstamp.data.items import BiasItem
from fairstamp.errors import DataError
from fairstamp.utils.io import atomic_write_json

log = logging.getLogger(__name__)

SECTIONS = ("intrasentence", "intersentence")


def export_predictions(
    items: Sequence[BiasItem], scores: Mapping[str, float], path: str | os.PathLike[str]
) -> None:
    """Write the score of every stereo/anti/unrelated sentence of StereoSet items, by sentence id.

    Refuses items without the three sentence ids, a sentence id seen twice, a missing or
    non-finite score, and an empty item set. The file is written atomically.
    """
    if not items:
        raise DataError("cannot export StereoSet predictions for an empty set of items")
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for item in items:
        triples = ((item.stereo_id, item.stereo, "stereo"), (item.anti_id, item.anti, "anti"),
                   (item.unrelated_id, item.unrelated, "unrelated"))
        for sentence_id, sentence, role in triples:
            if sentence_id is None or sentence is None:
                raise DataError(f"item {item.id!r} has no {role} sentence id; only StereoSet "
                                "items carry the ids the official format needs")
            if sentence_id in seen:
                raise DataError(f"item {item.id!r}: sentence id {sentence_id!r} appears twice")
            seen.add(sentence_id)
            try:
                value = float(scores[sentence])
            except KeyError:
                raise DataError(f"item {item.id!r}: no score for sentence {sentence!r}") from None
            if not math.isfinite(value):
                raise DataError(f"item {item.id!r}: the score of {sentence!r} is {value}, "
                                "which JSON cannot hold")
            rows.append({"id": sentence_id, "score": value})
    atomic_write_json(path, {"intrasentence": rows})
    log.info("wrote %d StereoSet sentence scores to %s", len(rows), path)


def read_predictions(path: str | os.PathLike[str]) -> dict[str, float]:
    """Sentence id -> score from an official-format predictions file (both sections if present)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not any(key in data for key in SECTIONS):
        raise DataError(f"{path}: expected an object with an 'intrasentence' list")
    out: dict[str, float] = {}
    for section in SECTIONS:
        rows = data.get(section, [])
        if not isinstance(rows, list):
            raise DataError(f"{path}: '{section}' is not a list")
        for k, row in enumerate(rows):
            where = f"{path}: {section}[{k}]"
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise DataError(f"{where}: expected {{'id': string, 'score': number}}")
            score = row.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise DataError(f"{where}: 'score' is not a number")
            if row["id"] in out:
                raise DataError(f"{where}: sentence id {row['id']!r} appears twice")
            out[row["id"]] = float(score)
    return out
