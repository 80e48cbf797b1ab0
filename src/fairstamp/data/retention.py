"""The retention set (Ω_D): facts about social groups that are legitimately different, which an
edit must keep (DS, RS). fairstamp ships a hand-written, reviewed set (`resources/retention.jsonl`,
see its datasheet); users can pass their own file in the same shape."""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fairstamp.data.items import CROWS_BIAS_TYPES, RETENTION_BIAS_TYPES, RetentionItem
from fairstamp.data.readers import display_name, iter_jsonl
from fairstamp.data.validate import (
    IdTracker,
    check_bias_type,
    check_distinct,
    require_records,
    require_str,
)

logger = logging.getLogger(__name__)

FIELDS = ("id", "bias_type", "group", "true", "false")
VALID_BIAS_TYPES = tuple(dict.fromkeys(RETENTION_BIAS_TYPES + CROWS_BIAS_TYPES))


def default_retention_path() -> Path:
    """The retention set shipped inside the package."""
    return Path(str(importlib.resources.files("fairstamp.data") / "resources" / "retention.jsonl"))


def load_retention(path: str | Path | None = None) -> list[RetentionItem]:
    """Retention items `{"id", "bias_type", "group", "true", "false"}`, validated, in file order;
    `path=None` loads the set shipped with fairstamp."""
    return _read(default_retention_path() if path is None else path)


def _read(path: str | Path) -> list[RetentionItem]:
    items = []
    ids = IdTracker()
    for name, number, obj in iter_jsonl(path):
        where = f"{name}:{number}"
        item_id, bias_type, group, true, false = (require_str(obj, f, where) for f in FIELDS)
        ids.add(item_id, where, f"line {number}")
        check_bias_type(bias_type, VALID_BIAS_TYPES, where)
        check_distinct(true, false, where)
        items.append(RetentionItem(item_id, bias_type, group, true, false))
    require_records(items, display_name(path), "retention items")
    logger.info("%s: %d retention items", display_name(path), len(items))
    return items
