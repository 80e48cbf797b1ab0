"""A user's own bias items, in the SPEC §2 JSON Lines shape:
`{"id", "source", "bias_type", "target", "stereo", "anti", "unrelated"?, "paraphrases"?}`.

The optional BiasItem fields `stereo_id`, `anti_id`, `unrelated_id` (strings) and `meta` (an
object) are accepted too, so items written out by fairstamp read back unchanged; any other field
is an error, so that a typo (`paraphrase`) is not silently ignored. A paraphrase may carry
`origin` ("file", the default, or "rule").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fairstamp.data.items import CROWS_BIAS_TYPES, STEREOSET_BIAS_TYPES, BiasItem, Paraphrase
from fairstamp.data.paraphrases import parse_pairs
from fairstamp.data.readers import display_name, iter_jsonl
from fairstamp.data.validate import (
    IdTracker,
    check_bias_type,
    check_distinct,
    optional_str,
    require_records,
    require_str,
    type_name,
)
from fairstamp.errors import DataError

logger = logging.getLogger(__name__)

VALID_BIAS_TYPES = tuple(dict.fromkeys(STEREOSET_BIAS_TYPES + CROWS_BIAS_TYPES))
REQUIRED = ("id", "source", "bias_type", "target", "stereo", "anti")
OPTIONAL = ("unrelated", "paraphrases", "stereo_id", "anti_id", "unrelated_id", "meta")


def load_bias_file(path: str | Path) -> list[BiasItem]:
    """Bias items from a JSON Lines file, validated, in file order."""
    items = []
    ids = IdTracker()
    for name, number, obj in iter_jsonl(path):
        where = f"{name}:{number}"
        unknown = [field for field in obj if field not in REQUIRED + OPTIONAL]
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                            f"(allowed: {', '.join(REQUIRED + OPTIONAL)})")
        item_id, source, bias_type, target, stereo, anti = (
            require_str(obj, field, where) for field in REQUIRED)
        ids.add(item_id, where, f"line {number}")
        check_bias_type(bias_type, VALID_BIAS_TYPES, where)
        check_distinct(stereo, anti, where)
        meta = {} if obj.get("meta") is None else obj["meta"]
        if not isinstance(meta, dict):
            raise DataError(f"{where}: field 'meta' is {type_name(meta)}, not an object")
        items.append(BiasItem(
            id=item_id, source=source, bias_type=bias_type, target=target, stereo=stereo,
            anti=anti, unrelated=optional_str(obj, "unrelated", where),
            paraphrases=_paraphrases(obj, where),
            stereo_id=optional_str(obj, "stereo_id", where),
            anti_id=optional_str(obj, "anti_id", where),
            unrelated_id=optional_str(obj, "unrelated_id", where), meta=meta,
        ))
    require_records(items, display_name(path), "bias items")
    logger.info("%s: %d bias items", display_name(path), len(items))
    return items


def _paraphrases(obj: dict[str, Any], where: str) -> tuple[Paraphrase, ...]:
    if obj.get("paraphrases") is None:
        return ()
    return tuple(parse_pairs(obj, where))
