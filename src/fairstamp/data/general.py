"""Loaders for the general-ability sets of BiaScope (SPEC §3): WikiText-2 test text, ROME's
`known_1000.json` facts and the llm-foundry multiple-choice files (BoolQ, COPA, WinoGrande, PIQA,
ARC-Easy). Every problem is reported as `file:line: what`.

Prefix/continuation join of the multiple-choice sets. llm-foundry stores a bare `query` and joins it
to each choice with a per-task `continuation_delimiter` (" " by default, "\\nAnswer: " for BoolQ,
PIQA and ARC). We form the same strings the lm-evaluation-harness scores: the prefix ends without a
space and the continuation starts with one, so the answer's first token is the usual space-prefixed
word and is scored as part of the answer.

| task       | prefix                           | continuation     |
|------------|----------------------------------|------------------|
| boolq      | query + "\\nAnswer:"              | " " + choice     |
| arc_easy   | query + "\\nAnswer:"              | " " + choice     |
| piqa       | query (trailing "\\n" dropped) + "\\nAnswer:" | " " + choice |
| copa       | query ("..., therefore")         | " " + choice     |
| winogrande | each context option (partial scoring) | " " + continuation |

(PIQA's query ends in a newline; llm-foundry would give "...\\n\\nAnswer: ", the harness
"...\\nAnswer: "; we follow the harness.)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairstamp.data.readers import display_name, iter_jsonl, read_text
from fairstamp.data.validate import require_int, require_list, require_str, type_name
from fairstamp.errors import DataError

log = logging.getLogger(__name__)

#: Multiple-choice tasks and how their prefix is formed: ("query", suffix) or ("schema", None).
TASK_FORMATS: dict[str, tuple[str, str | None]] = {
    "boolq": ("query", "\nAnswer:"),
    "arc_easy": ("query", "\nAnswer:"),
    "piqa": ("query", "\nAnswer:"),
    "copa": ("query", ""),
    "winogrande": ("schema", None),
}

WIKITEXT2_TEST_NAME = "wiki.test.raw"


@dataclass(frozen=True)
class KnownFact:
    """One fact of ROME's known_1000: the model is asked for `attribute` right after `prompt`."""

    known_id: int
    subject: str
    attribute: str
    prompt: str
    relation_id: str
    template: str = ""
    prediction: str = ""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question as scoring pairs: choice i is `continuations[i]` after
    `prefixes[i]` (the same query repeated, or WinoGrande's context options). Continuations start
    with the joining space; `gold` indexes the right choice."""

    id: str
    prefixes: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int

    @property
    def n_choices(self) -> int:
        return len(self.continuations)


# -- WikiText-2 --------------------------------------------------------------------------------


def load_wikitext2_test(path: str | Path | None = None) -> str:
    """The raw WikiText-2 test text with `\\n` line ends.

    `path` is the raw test split (`wiki.test.raw` of wikitext-2-raw-v1) or a folder holding it.
    The data do not ship with fairstamp, so the caller must say where they are.
    """
    if path is None:
        raise DataError(
            "no WikiText-2 test file given: pass the path of the raw test split "
            f"({WIKITEXT2_TEST_NAME} of wikitext-2-raw-v1, e.g. the Hugging Face "
            "'wikitext-2-raw-v1' test rows written one per line)"
        )
    p = Path(path)
    if p.is_dir():
        found = sorted(p.rglob(WIKITEXT2_TEST_NAME))
        if not found:
            raise DataError(f"{p}: no {WIKITEXT2_TEST_NAME} in this folder")
        p = found[0]
    if not p.exists():
        raise DataError(f"{p}: no such file (expected the raw WikiText-2 test split)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not valid UTF-8 ({exc.reason})") from None
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{p}: no text (the file is empty)")
    if "<unk>" in text:
        log.warning("%s contains <unk>: this looks like the tokenized WikiText-2 release; "
                    "perplexity of subword models is normally measured on the raw text", p)
    return text


# -- known_1000 --------------------------------------------------------------------------------

_FACT_REQUIRED = ("subject", "attribute", "prompt", "relation_id")
_FACT_OPTIONAL = ("template", "prediction")


def load_known_facts(path: str | Path) -> list[KnownFact]:
    """Facts of a known_1000-style file: a JSON array (ROME's layout) or JSON Lines."""
    p = Path(path)
    name = display_name(p)
    text = read_text(p)
    if text.lstrip().startswith("["):
        records = _iter_json_array(name, text)
    else:
        records = ((n, obj) for _, n, obj in iter_jsonl(p))
    facts: list[KnownFact] = []
    seen: dict[int, int] = {}
    for number, obj in records:
        fact = _known_fact(name, number, obj)
        if fact.known_id in seen:
            raise DataError(f"{name}:{number}: known_id {fact.known_id} repeats line "
                            f"{seen[fact.known_id]}")
        seen[fact.known_id] = number
        facts.append(fact)
    if not facts:
        raise DataError(f"{name}: no facts (the file is empty)")
    return facts


def _iter_json_array(name: str, text: str):
    """(line number where each element starts, element) of a JSON array, element by element."""
    decoder = json.JSONDecoder()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0) + 1  # after "["
    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        start = skip(pos)
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{exc.lineno}: invalid JSON ({exc.msg} at column "
                            f"{exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}:{line_of(start)}: expected a JSON object, "
                            f"got {type(obj).__name__}")
        yield line_of(start), obj
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            if skip(pos + 1) != len(text):
                raise DataError(f"{name}:{line_of(skip(pos + 1))}: text after the array")
            return
        raise DataError(f"{name}:{line_of(pos)}: expected ',' or ']' after an element")


def _known_fact(name: str, number: int, obj: dict[str, Any]) -> KnownFact:
    known_id = require_int(obj, "known_id", f"{name}:{number}")
    values = {f: _string(name, number, obj, f) for f in _FACT_REQUIRED}
    for f in _FACT_OPTIONAL:
        values[f] = _string(name, number, obj, f) if f in obj else ""
    return KnownFact(known_id=known_id, **values)


# -- multiple choice ---------------------------------------------------------------------------


def load_multiple_choice(
    path: str | Path, task: str, limit: int | None = None
) -> list[ChoiceItem]:
    """The first `limit` items (all when None) of an llm-foundry multiple-choice file.

    `task` picks the prefix/continuation join (see the module docstring); ids are `task/line`.
    """
    if task not in TASK_FORMATS:
        raise DataError(f"unknown multiple-choice task {task!r}; known: "
                        f"{', '.join(sorted(TASK_FORMATS))}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    kind, suffix = TASK_FORMATS[task]
    items: list[ChoiceItem] = []
    for name, number, obj in iter_jsonl(path):
        if kind == "schema":
            prefixes = _string_list(name, number, obj, "context_options")
            continuation = _string(name, number, obj, "continuation")
            continuations = [" " + continuation.strip()] * len(prefixes)
        else:
            query = _string(name, number, obj, "query").rstrip()
            choices = _string_list(name, number, obj, "choices")
            prefixes = [query + (suffix or "")] * len(choices)
            continuations = [" " + c.strip() for c in choices]
        gold = require_int(obj, "gold", f"{name}:{number}")
        if not 0 <= gold < len(continuations):
            raise DataError(f"{name}:{number}: gold {gold} is out of range for "
                            f"{len(continuations)} choices")
        items.append(ChoiceItem(id=f"{task}/{number}", prefixes=tuple(prefixes),
                                continuations=tuple(continuations), gold=gold))
        if limit is not None and len(items) >= limit:
            break
    return items


# -- field checks ------------------------------------------------------------------------------


def _string(name: str, number: int, obj: dict[str, Any], field: str) -> str:
    return require_str(obj, field, f"{name}:{number}")


def _string_list(name: str, number: int, obj: dict[str, Any], field: str) -> list[str]:
    where = f"{name}:{number}"
    value = require_list(obj, field, where)
    if len(value) < 2:
        raise DataError(f"{where}: field '{field}' has {len(value)} option(s); at least 2 are "
                        "needed")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            what = "empty" if isinstance(v, str) else f"{type_name(v)}, not a string"
            raise DataError(f"{where}: {field}[{i}] is {what}")
    return value
