"""Counterfactual text: the same sentence about another group.

- `AttributeSwap`: whole-word, case-preserving swaps of bias-bench's attribute words (gender
  pairs, race and religion triples); CDA augments its corpus with it.
- `subject_pairs`: for FAST's subject-swap training pairs [ours; docs/fast.md, "Which pairs the
  stamp equalises"], each edited sentence and the same sentence about a counterfactual group of
  the same bias type ("The mother was caring." / "The father was caring."). Gender sentences swap
  every gendered word (bias-bench's pairs plus `EXTRA_GENDER_PAIRS`, which StereoSet's gender
  targets need); other bias types replace the item's target with another *edited* target of the
  same bias type (so a held-out target never appears by name), falling back to the word swap when
  the sentence does not name its target.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from fairstamp.data.attribute_words import load_attribute_words
from fairstamp.data.items import BiasItem
from fairstamp.errors import DataError

#: Gender pairs that bias-bench's list lacks and StereoSet's gender targets use [ours].
EXTRA_GENDER_PAIRS = (
    ("grandfather", "grandmother"), ("grandfathers", "grandmothers"),
    ("grandpa", "grandma"), ("schoolboy", "schoolgirl"), ("schoolboys", "schoolgirls"),
    ("boyfriend", "girlfriend"), ("boyfriends", "girlfriends"), ("stepfather", "stepmother"),
    ("nephew", "niece"), ("nephews", "nieces"), ("fiance", "fiancee"), ("waiter", "waitress"),
)


class AttributeSwap:
    """Whole-word, case-preserving counterfactual swaps of attribute words (pairs and triples)."""

    def __init__(self, tuples: Mapping[str, Sequence[Sequence[str]]]) -> None:
        # word → (bias type, its tuple, its position); later listings overwrite earlier ones.
        self.table: dict[str, tuple[str, tuple[str, ...], int]] = {}
        for bias_type, group in tuples.items():
            for words in group:
                words = tuple(w.lower() for w in words)
                if len(words) < 2:
                    raise DataError(f"{bias_type}: an attribute tuple needs 2 or more words: "
                                    f"{list(words)}")
                for position, word in enumerate(words):
                    self.table[word] = (bias_type, words, position)
        if not self.table:
            raise DataError("no attribute words to swap")
        alternatives = "|".join(re.escape(w) for w in sorted(self.table, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | Path, bias_types: Sequence[str], *,
                  needed_by: str = "CDA") -> AttributeSwap:
        return cls(load_attribute_words(path, bias_types, needed_by=needed_by))

    def has_attribute(self, sentence: str) -> bool:
        return self.pattern.search(sentence) is not None

    def counterfactual(self, sentence: str, rng: random.Random) -> str | None:
        """`sentence` with every attribute word swapped, or None when it has none. For tuples of
        more than two words, one target position per (bias type, position) is drawn from `rng`
        the first time a sentence needs it."""
        choices: dict[tuple[str, int], int] = {}

        def swap(match: re.Match) -> str:
            found = match.group(0)
            bias_type, words, position = self.table[found.lower()]
            if len(words) == 2:
                target = 1 - position
            else:
                key = (bias_type, position)
                if key not in choices:
                    choices[key] = rng.choice([i for i in range(len(words)) if i != position])
                target = choices[key]
            return same_case(found, words[target])

        swapped, n = self.pattern.subn(swap, sentence)
        return swapped if n else None


def same_case(original: str, word: str) -> str:
    """`word` in `original`'s case: ALL CAPS, Capitalised, or as listed (lower case)."""
    letters = [c for c in original if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return word.upper()
    if letters and letters[0].isupper():
        return word[:1].upper() + word[1:]
    return word


def group_swap(words_file: str | Path, bias_types: Sequence[str]) -> AttributeSwap:
    """bias-bench's words of those of `bias_types` it lists, with `EXTRA_GENDER_PAIRS`."""
    words = load_attribute_words(words_file, bias_types, needed_by="subject-swap pairs",
                                 skip_missing=True)
    if "gender" in words:
        words["gender"] = [*words["gender"], *(list(p) for p in EXTRA_GENDER_PAIRS)]
    return AttributeSwap(words)


def _target_pattern(target: str) -> re.Pattern:
    """The target as a whole word, with an optional plural ending (kept on replacement)."""
    return re.compile(rf"(?<!\w)({re.escape(target)})(s|es)?(?!\w)", re.IGNORECASE)


def subject_pairs(items: Sequence[BiasItem], swap: AttributeSwap | None, *, seed: int = 0
                  ) -> list[tuple[str, str, str]]:
    """(sentence, its counterfactual about another group, item id) for the stereo and the anti
    sentence of each item that has one; items without a counterfactual are left out."""
    targets: dict[str, list[str]] = {}
    for item in items:
        if item.target not in targets.setdefault(item.bias_type, []):
            targets[item.bias_type].append(item.target)
    out = []
    for item in items:
        digest = hashlib.sha256(f"{seed}\x1f{item.id}".encode()).digest()
        others = sorted(t for t in targets[item.bias_type]
                        if t.casefold() != item.target.casefold())
        other = others[int.from_bytes(digest[:4], "big") % len(others)] if others else None
        pattern = _target_pattern(item.target)
        for sentence in (item.stereo, item.anti):
            counterfactual = None
            if item.bias_type != "gender" and other is not None and pattern.search(sentence):
                counterfactual = pattern.sub(
                    lambda m, o=other: same_case(m.group(1), o) + (m.group(2) or ""), sentence)
            elif swap is not None:
                counterfactual = swap.counterfactual(sentence, random.Random(digest))
            if counterfactual and counterfactual != sentence:
                out.append((sentence, counterfactual, item.id))
    return out
