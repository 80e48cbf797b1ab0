"""What a stamp is trained on, besides the bias items themselves [ours; docs/fast.md].

- **Framings** of each edited pair: the same (stereo, anti) sentences behind a short lead-in, so the
  stamp cannot key on a sentence's first tokens and absolute positions. They are deliberately
  different from the rule paraphraser's framings and never use the evaluation paraphrases (PS is
  measured on the GPT paraphrases, which no training path reads).
- **Neutral sentences that mention the edited groups** (part of L_s1): templates that name each
  edited target without any attribute, so the stamp keeps the groups themselves intact.
- **Retention items** (part of L_s1): a fixed, hash-chosen half of the project's retention set;
  the other half is never trained on, and RS is reported on it separately.
- **Generic text** (L_s2): sentences and passages of a few hundred words of WikiText-2 *valid*
  (the perplexity metric reads *test*). The passages because a stamp trained against short
  sentences only kept the model's next-token distributions at the first ~256 positions and
  drifted further out (docs/fast.md, "Perplexity").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fairstamp.data.attribute_words import ATTRIBUTE_WORDS
from fairstamp.data.counterfactual import (
    SWAPPED_TYPES,
    AttributeSwap,
    group_swap,
    subject_pairs,
    target_substitutions,
)
from fairstamp.data.items import BiasItem, RetentionItem
from fairstamp.data.locations import WIKITEXT2_VALID, data_root, require
from fairstamp.data.retention import load_retention
from fairstamp.data.wikitext import generic_passages, generic_sentences
from fairstamp.errors import FairstampError

#: Lead-ins put before an edited pair's sentences (never the rule paraphraser's framings).
FRAMINGS = (
    "My neighbour mentioned this: ",
    "Quote from a conversation: ",
    "Notes from yesterday. ",
    "As written in the letter: ",
)

#: Neutral sentences naming a target, with no attribute about it.
NEUTRAL_TEMPLATES = (
    "This sentence mentions {target}.",
    "The next word is {target}.",
    "We wrote the word \"{target}\" on the board.",
    "Here is a sentence about {target}.",
    "The topic of the talk was {target}.",
    "The article used the term {target} twice.",
)

#: Which sentence pairs the stamp equalises (`FitConfig.pairs`; docs/fast.md, "Which pairs the
#: stamp equalises"): "attribute", the item's stereotype vs anti-stereotype sentence (same group);
#: "subject", each of those sentences vs the same sentence about a counterfactual group
#: (data/counterfactual.py); "both".
PAIR_KINDS = ("attribute", "subject", "both")
#: What a subject-swap pair's gap reads (`LoopSettings.subject_score`): "sentence", each
#: sentence's per-token mean log-probability (as SS scores sentences); "suffix", only the tokens
#: after the swapped group words (the pair's common token suffix), so that the gap is how much
#: likelier the rest of the sentence is after one group than after the other, not which group
#: word is likelier in the first place.
SUBJECT_SCORES = ("sentence", "suffix")


def framed_pairs(items: Sequence[BiasItem], n_framings: int) -> list[tuple[str, str, str]]:
    """(stereo, anti, item id) of each item as is, then behind its first `n_framings` framings."""
    if not 0 <= n_framings <= len(FRAMINGS):
        raise ValueError(f"n_framings must be in [0, {len(FRAMINGS)}]")
    out = [(i.stereo, i.anti, i.id) for i in items]
    for framing in FRAMINGS[:n_framings]:
        out.extend((framing + i.stereo, framing + i.anti, i.id) for i in items)
    return out


class TrainingPairs(NamedTuple):
    """`pairs` begin with each item's own (stereo, anti) pair, in item order (what the SS checks
    score); `trained` lists the indices of the pairs training draws from; the pairs from index
    `first_subject` on are subject swaps (`len(pairs)`: none)."""

    pairs: list[tuple[str, str, str]]
    trained: list[int]
    first_subject: int


def training_pairs(items: Sequence[BiasItem], n_framings: int, kind: str = "attribute",
                   swap: AttributeSwap | None = None, *, seed: int = 0,
                   augment: int = 0) -> TrainingPairs:
    """The pairs training equalises: the attribute pairs with their framings (and, with
    `augment` > 0, each gender pair with its target replaced by up to `augment` other gender
    nouns of `swap`), the subject-swap pairs with theirs, or both (after the items' own pairs,
    which the SS checks score)."""
    if kind not in PAIR_KINDS:
        raise FairstampError(f"pairs must be one of {', '.join(PAIR_KINDS)}, got {kind!r}")
    if augment and swap is None:
        raise FairstampError("target augmentation needs the group words (bias-bench's attribute "
                             "words in the public data folder)")
    if augment and kind == "subject":
        raise FairstampError("target augmentation copies attribute pairs: use it with pairs="
                             "attribute or both, not subject")
    attribute = framed_pairs(items, n_framings)
    if augment:
        attribute += target_substitutions(items, swap, augment, seed=seed)
    if kind == "attribute":
        return TrainingPairs(attribute, list(range(len(attribute))), len(attribute))
    plain = subject_pairs(items, swap, seed=seed)
    if not plain:
        raise FairstampError("no item has a subject-swap counterfactual (no group word or target "
                             "to swap)")
    subject = [*plain, *((framing + a, framing + b, item_id)
                         for framing in FRAMINGS[:n_framings] for a, b, item_id in plain)]
    if kind == "subject":
        head = attribute[: len(items)]
        return TrainingPairs([*head, *subject], list(range(len(head), len(head) + len(subject))),
                             len(head))
    pairs = [*attribute, *subject]
    return TrainingPairs(pairs, list(range(len(pairs))), len(attribute))


def neutral_sentences(targets: Iterable[str]) -> list[str]:
    """Every template filled with every distinct target, in a fixed order."""
    distinct = list(dict.fromkeys(t.strip() for t in targets if t.strip()))
    return [template.format(target=t) for t in distinct for template in NEUTRAL_TEMPLATES]


def _half(key: str, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return digest[0] < 128


def split_retention(items: Sequence[RetentionItem], *, seed: int = 0
                    ) -> tuple[list[RetentionItem], list[RetentionItem]]:
    """(trained on, never trained on): a stable half of the items by a hash of seed and id."""
    trained = [i for i in items if _half(i.id, seed)]
    unseen = [i for i in items if not _half(i.id, seed)]
    return trained, unseen


@dataclass
class TrainingText:
    """What the stamp's KL terms read: retention sentences (L_s1), generic sentences and passages
    (L_s2), and the retention items the sentences came from; and the group words that make
    subject-swap pairs (None without bias-bench's word list)."""

    retention_sentences: list[str]
    generic_sentences: list[str]
    generic_passages: list[str]
    retention_trained: list[RetentionItem]
    group_swap: AttributeSwap | None = None


def training_text(bias_types: Sequence[str] | None = None, *, seed: int = 0,
                  data_dir: str | Path | None = None, n_generic: int = 200,
                  n_passages: int = 32, passage_words: int = 300) -> TrainingText:
    """The stamp's retention text: a fixed half of the retention items of `bias_types`,
    `n_generic` WikiText-2 valid sentences and `n_passages` passages of `passage_words` words.
    `data_dir` is the public data folder (default: $FAIRSTAMP_DATA or ../shared/data)."""
    retention = load_retention()
    if bias_types:
        retention = [r for r in retention if r.bias_type in bias_types] or retention
    trained, _ = split_retention(retention, seed=seed)
    root = data_root(data_dir)
    path = require(root, WIKITEXT2_VALID, "the stamp's generic text (WikiText-2 valid)")
    passages = generic_passages(path, n_passages, words=passage_words, seed=seed) \
        if n_passages else []
    words = Path(root) / ATTRIBUTE_WORDS
    swap = None
    if words.is_file():
        types = list(bias_types or json.loads(words.read_text(encoding="utf-8")))
        swap = group_swap(words, types) if set(types) & set(SWAPPED_TYPES) else None
    return TrainingText([s for r in trained for s in (r.true, r.false)],
                        generic_sentences(path, n_generic, seed=seed), passages, trained, swap)
