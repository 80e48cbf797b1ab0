"""bias-bench's attribute word tuples (`bias_bench/bias_attribute_words.json` in the public data
folder): gender pairs ("he", "she"), race and religion triples. CDA swaps them; INLP and
SentenceDebias find sentences that mention them."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from fairstamp.errors import DataError

log = logging.getLogger(__name__)

#: Relative to the public data folder.
ATTRIBUTE_WORDS = Path("bias_bench") / "bias_attribute_words.json"


def load_attribute_words(path: str | Path, bias_types: Sequence[str], *, needed_by: str,
                         skip_missing: bool = False) -> dict[str, list[list[str]]]:
    """The lower-cased word tuples of each of `bias_types`. A bias type the file does not list is
    an error, or, with `skip_missing`, skipped with a warning (still an error when none is left).
    `needed_by` names the method in the messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing (bias-bench's attribute words, needed by {needed_by})")
    table = json.loads(path.read_text(encoding="utf-8"))
    missing = [t for t in bias_types if t not in table]
    if missing and not skip_missing:
        raise DataError(f"{path}: no attribute words for {', '.join(missing)}; it has "
                        f"{', '.join(table)}")
    if missing:
        log.warning("no attribute words for %s (bias-bench has %s): skipped",
                    ", ".join(missing), ", ".join(table))
    out = {t: [[w.lower() for w in group] for group in table[t]] for t in bias_types if t in table}
    if not out:
        raise DataError(f"{path}: none of the bias types {list(bias_types)} has attribute words; "
                        f"it has {', '.join(table)}")
    return out
