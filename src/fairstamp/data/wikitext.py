"""WikiText-2 as plain sentences and passages: the generic text that training (L_s2) and the
baselines' corpora read (WikiText-2 *valid*; the perplexity metric reads *test*)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

from fairstamp.errors import DataError

_DETOKENIZE = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" ; ", "; "),
               (" : ", ": "), (" 's", "'s"), (" ( ", " ("), (" ) ", ") "), (" n't", "n't")]


def wikitext_sentences(path: str | Path, what: str = "WikiText-2 text"
                       ) -> Iterator[tuple[str, str]]:
    """(raw sentence, lightly detokenised text) of every sentence of a WikiText file, headings
    dropped, in file order; callers filter (e.g. on `<unk>` or length)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in re.split(r"(?<= \.) ", line):
            text = " " + sentence.strip() + " "
            for old, new in _DETOKENIZE:
                text = text.replace(old, new)
            yield sentence, text.strip().replace(" .", ".")


def clean_sentences(path: str | Path, *, min_words: int = 6, max_words: int = 25,
                    what: str = "WikiText-2 text") -> list[str]:
    """Every sentence of a WikiText file with `min_words`..`max_words` words and no `<unk>`, in
    file order."""
    return [text for raw, text in wikitext_sentences(path, what)
            if "<unk>" not in raw and min_words <= len(raw.split()) <= max_words]


def generic_sentences(path: str | Path, n: int, *, seed: int = 0, min_words: int = 6,
                      max_words: int = 25) -> list[str]:
    """`n` sentences of WikiText-2 valid text (headings and sentences with <unk> dropped),
    chosen with `seed`, lightly detokenised."""
    sentences = clean_sentences(path, min_words=min_words, max_words=max_words,
                                what="generic text for the stamp's L_s2 term")
    if len(sentences) < n:
        raise DataError(f"{path}: only {len(sentences)} usable sentences, {n} requested")
    return random.Random(seed).sample(sentences, n)


def generic_passages(path: str | Path, n: int, *, words: int = 300, seed: int = 0) -> list[str]:
    """`n` passages of WikiText-2 valid text, chosen with `seed`: runs of consecutive sentences
    (headings and sentences with <unk> dropped, lightly detokenised) of at least `words` words,
    cut one after the other from the file, so no two passages overlap."""
    if words < 1:
        raise ValueError(f"words must be at least 1, got {words}")
    passages: list[str] = []
    current: list[str] = []
    count = 0
    for raw, text in wikitext_sentences(path, "generic text for the stamp's L_s2 term"):
        if "<unk>" in raw:
            continue
        current.append(text)
        count += len(text.split())
        if count >= words:
            passages.append(" ".join(current))
            current, count = [], 0
    if len(passages) < n:
        raise DataError(f"{path}: only {len(passages)} passages of {words} words, {n} requested")
    return random.Random(seed).sample(passages, n)
