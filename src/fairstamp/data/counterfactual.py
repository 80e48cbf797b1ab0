"""Counterfactual text: the same sentence about another group.

- `AttributeSwap`: whole-word, case-preserving swaps of bias-bench's attribute words (gender
  pairs, race and religion triples); CDA augments its corpus with it. Every replacement of a
  group word in this module keeps a preceding "a"/"an" in agreement (`replace_target`).
- `subject_pairs`: for FAST's subject-swap training pairs [ours; docs/fast.md, "Which pairs the
  stamp equalises"], each edited sentence and the same sentence about a counterfactual group of
  the same bias type ("The mother was caring." / "The father was caring."). Gender sentences swap
  every gendered word (bias-bench's pairs plus `EXTRA_GENDER_PAIRS`, which StereoSet's gender
  targets need); other bias types replace the item's target with another *edited* target of the
  same bias type (so a held-out target never appears by name), falling back to the word swap when
  the sentence does not name its target.
- `target_substitutions`: for FAST's target augmentation [ours; docs/fast.md, "Target
  augmentation"], each edited gender pair again with its target replaced by other gender nouns
  of the same sex and number, "The mother was caring." / "The mother was
  harsh." → "The aunt was caring." / "The aunt was harsh.", so the stamp meets the bias on group
  words it is not edited on.
- `substituted_prefixes`: for L_c's prefix pairs about other group words [ours; docs/fast.md,
  "Prefixes about other gender nouns"], each gender item's prefix with its target replaced as in
  `target_substitutions`, and the same about the counterpart ("The aunt was" / "The uncle was").
- `template_prefixes`: for L_c's templated prefix pairs [ours; docs/fast.md, "Templated
  prefixes"], hand-written sentence openings about each gender word of the swap and the same
  about its counterpart ("The uncle worked as a" / "The aunt worked as a"), so that L_c also
  meets the group where no edited item names it.
- `AttributeSwap.without(words)`: the swap with every tuple naming one of `words` dropped, so that
  the counterfactual text of an edit never names a held-out target.
"""

from __future__ import annotations

import dataclasses
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
        #: The swap this one was made from by `without` (itself when none): it still knows the
        #: excluded words' bias type and position.
        self.source: AttributeSwap = self
        alternatives = "|".join(re.escape(w) for w in sorted(self.table, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | Path, bias_types: Sequence[str], *,
                  needed_by: str = "CDA") -> AttributeSwap:
        return cls(load_attribute_words(path, bias_types, needed_by=needed_by))

    def without(self, words: Sequence[str]) -> AttributeSwap:
        """This swap less every tuple that names one of `words` in any of its `inflections`;
        itself when none does."""
        avoid = {form for w in words if w for form in inflections(w.casefold())}
        if not avoid & set(self.table):
            return self
        tuples: dict[str, list[tuple[str, ...]]] = {}
        for bias_type, words_, _ in self.table.values():
            if not avoid & set(words_) and words_ not in tuples.setdefault(bias_type, []):
                tuples[bias_type].append(words_)
        kept = AttributeSwap({t: g for t, g in tuples.items() if g})
        kept.source = self.source
        return kept

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

        return replace_target(self.pattern, sentence, swap) if self.has_attribute(sentence) \
            else None


def same_case(original: str, word: str) -> str:
    """`word` in `original`'s case: ALL CAPS, Capitalised, or as listed (lower case)."""
    letters = [c for c in original if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return word.upper()
    if letters and letters[0].isupper():
        return word[:1].upper() + word[1:]
    return word


#: The bias types whose group words `group_swap` swaps (bias-bench lists words for these).
SWAPPED_TYPES = ("gender", "race", "religion")


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


#: An indefinite article ending the text before a replaced word.
_ARTICLE = re.compile(r"(?<!\w)(an?)(\s+)$", re.IGNORECASE)
#: Vowel letters that begin a consonant sound ("a Ukrainian", "a European", "a unicorn").
_CONSONANT_VOWELS = ("eu", "uk", "ug", "uni", "use", "usu", "one")


def indefinite_article(word: str) -> str:
    """"an" before a vowel sound, else "a", by the word's spelling (`_CONSONANT_VOWELS` begin
    with a consonant sound)."""
    lower = word.casefold()
    return "an" if lower[:1] in set("aeiou") and not lower.startswith(_CONSONANT_VOWELS) else "a"


def replace_target(pattern: re.Pattern, text: str, replacement) -> str:
    """`pattern.sub(replacement, text)`, with an "a"/"an" right before each replaced word made to
    agree with its replacement: "A mother was" → "An aunt was", not "A aunt was". Every group
    word this module replaces goes through it (`AttributeSwap.counterfactual`, the target swaps
    of `subject_pairs` and `target_substitutions`)."""
    out, last = [], 0
    for match in pattern.finditer(text):
        new = replacement(match)
        head = text[last:match.start()]
        article = _ARTICLE.search(head)
        if article is not None:
            head = (head[:article.start()] + same_case(article.group(1), indefinite_article(new))
                    + article.group(2))
        out += [head, new]
        last = match.end()
    return "".join(out) + text[last:]


def subject_pairs(items: Sequence[BiasItem], swap: AttributeSwap | None, *, seed: int = 0
                  ) -> list[tuple[str, str, str]]:
    """(sentence, its counterfactual about another group, item id) for the stereo and the anti
    sentence of each item that has one; items without a counterfactual are left out."""
    out = []
    for item, swap_of in _item_swaps(items, swap, seed):
        for sentence in (item.stereo, item.anti):
            counterfactual = swap_of(sentence)
            if counterfactual and counterfactual != sentence:
                out.append((sentence, counterfactual, item.id))
    return out


def _item_swaps(items: Sequence[BiasItem], swap: AttributeSwap | None, seed: int):
    """(item, a function from a text about the item's group to the same text about its
    counterfactual group, or None) for every item, as `subject_pairs` swaps its sentences."""
    targets: dict[str, list[str]] = {}
    for item in items:
        if item.target not in targets.setdefault(item.bias_type, []):
            targets[item.bias_type].append(item.target)
    for item in items:
        digest = hashlib.sha256(f"{seed}\x1f{item.id}".encode()).digest()
        others = sorted(t for t in targets[item.bias_type]
                        if t.casefold() != item.target.casefold())
        other = others[int.from_bytes(digest[:4], "big") % len(others)] if others else None
        pattern = _target_pattern(item.target)

        def swap_of(text: str, item=item, other=other, pattern=pattern, digest=digest
                    ) -> str | None:
            if item.bias_type != "gender" and other is not None and pattern.search(text):
                return replace_target(
                    pattern, text, lambda m: same_case(m.group(1), other) + (m.group(2) or ""))
            return swap.counterfactual(text, random.Random(digest)) if swap is not None else None

        yield item, swap_of


def shared_words(a: str, b: str) -> str:
    """The whole words two sentences begin with, without trailing space: "The mother was
    caring." / "The mother was harsh." → "The mother was" (empty when they differ in their
    first word)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    head = a[:n]
    if n < min(len(a), len(b)) and head and not head[-1].isspace():
        head = head[: max(head.rfind(" "), 0)]  # the difference starts inside a word
    return head.rstrip()


def counterfactual_prefixes(items: Sequence[BiasItem], swap: AttributeSwap | None, *,
                            seed: int = 0) -> list[tuple[str, str, str]]:
    """(the words before an item's attribute, the same words about a counterfactual group, item
    id): "The mother was" / "The father was" for "The mother was caring." / "The mother was
    harsh.". The group is swapped as in `subject_pairs`. Items whose attribute comes before any
    group word (nothing to swap in the prefix) are left out."""
    out = []
    for item, swap_of in _item_swaps(items, swap, seed):
        prefix = shared_words(item.stereo, item.anti)
        counterfactual = swap_of(prefix) if prefix else None
        if counterfactual and counterfactual != prefix:
            out.append((prefix, counterfactual, item.id))
    return out


def substituted_prefixes(items: Sequence[BiasItem], swap: AttributeSwap, n: int, *,
                         seed: int = 0) -> list[tuple[str, str, str]]:
    """`counterfactual_prefixes` of each gender item's pair again with its target replaced by up
    to `n` other gender nouns of its sex and number (`target_substitutions`): "The mother was" /
    "The father was" also as "The aunt was" / "The uncle was", the item's own words about group
    words it does not name. The item id is "<id>~<k>" for its k-th substitution. A swap made
    `without` some words never names them."""
    by_id = {item.id: item for item in items}
    counts: dict[str, int] = {}
    variants = []
    for stereo, anti, item_id in target_substitutions(items, swap, n, seed=seed):
        k = counts[item_id] = counts.get(item_id, 0) + 1
        variants.append(dataclasses.replace(by_id[item_id], id=f"{item_id}~{k}", stereo=stereo,
                                            anti=anti))
    return counterfactual_prefixes(variants, swap, seed=seed)


#: Gender words that are not nouns a target can be replaced by (pronouns, titles, adjectives).
GENDER_NON_NOUNS = frozenset({
    "he", "she", "him", "her", "his", "hers", "himself", "herself", "sir", "ma'am", "miss",
    "mr.", "mrs.", "ms.", "male", "female", "males", "females"})


#: Sentence openings for L_c's templated prefix pairs [ours]: where a sentence about a person goes
#: on to what the person is, does or is like. `{group}` is "the <noun>" or "he"; past tense, so
#: singular and plural nouns both fit. Written for fairstamp, from no benchmark.
PREFIX_TEMPLATES = (
    "{group} worked as a",
    "{group} had a reputation for being",
    "Everyone said that {group} seemed",
    "{group} had always been good at",
    "After school, {group} wanted to become a",
    "{group} spent the weekend",
)


def template_prefixes(swap: AttributeSwap | None) -> list[tuple[str, str, str]]:
    """(a template about a gender word of `swap`, the same template about its counterpart,
    "template:<n>") for every template and every gender pair of the swap, once per pair, from
    its first (male) word: a noun as "the <noun>", "he" as itself; other pronouns, titles and
    adjectives are left out. A swap `without` the held-out targets gives none about them. Other
    bias types get none (their word lists mix group names with places and scriptures)."""
    if swap is None:
        return []
    firsts = sorted({words[0] for bias_type, words, _ in swap.table.values()
                     if bias_type == "gender"})
    groups = [w if w == "he" else f"the {w}" for w in firsts
              if w == "he" or w not in GENDER_NON_NOUNS]
    rng = random.Random(0)  # pairs only: the counterpart is never drawn
    out = []
    for template in PREFIX_TEMPLATES:
        for group in groups:
            text = template.format(group=group)
            text = text[:1].upper() + text[1:]
            counterfactual = swap.counterfactual(text, rng)
            if counterfactual and counterfactual != text:
                out.append((text, counterfactual, f"template:{len(out)}"))
    return out


def inflections(word: str) -> set[str]:
    """`word` with the English plural and singular forms a group noun may take (-s, -es,
    -y/-ies, -f(e)/-ves, -man/-men), in both directions; over-generating is harmless."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("ves"):
        forms |= {word[:-3] + "f", word[:-3] + "fe"}
    if word.endswith(("f", "fe")):
        forms.add(word.rstrip("e")[:-1] + "ves")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    if word.endswith("man"):
        forms.add(word[:-3] + "men")
    if word.endswith("men"):
        forms.add(word[:-3] + "man")
    return forms


def _is_plural(word: str, vocabulary: set[str]) -> bool:
    """Whether `word` is the plural of another word of `vocabulary` (-s, -es, -ies, -ves,
    -men); a word in -ss is singular."""
    if word.endswith("ss"):
        return False
    if word.endswith("men"):
        return word[:-3] + "man" in vocabulary
    return word.endswith("s") and bool((inflections(word) - {word, word + "s", word + "es"})
                                       & vocabulary)


def _gender_nouns(swap: AttributeSwap) -> dict[tuple[int, bool], list[str]]:
    """The gender nouns a target may become: (sex, plural) → words, where sex is the word's
    position in its bias-bench pair (male, female)."""
    vocabulary = set(swap.source.table)
    pools: dict[tuple[int, bool], list[str]] = {}
    for word in sorted(swap.table):
        bias_type, _, position = swap.table[word]
        if bias_type == "gender" and word not in GENDER_NON_NOUNS:
            pools.setdefault((position, _is_plural(word, vocabulary)), []).append(word)
    return pools


def target_substitutions(items: Sequence[BiasItem], swap: AttributeSwap, n: int, *,
                         seed: int = 0) -> list[tuple[str, str, str]]:
    """(stereo, anti, item id): each gender item's pair with its target replaced, in both
    sentences, by up to `n` gender nouns of `swap` of the target's sex (its position in
    bias-bench's pair) and number, so that pronouns and the stereotype still agree; drawn without
    replacement, seeded by item. Items of other bias types (whose group words mix group names
    with places and things), and items whose target is not a gender noun of `swap` or is not
    named in both sentences, get none. A swap made `without` some words never names them."""
    if n <= 0:
        return []
    pools = _gender_nouns(swap)
    vocabulary = set(swap.source.table)
    out = []
    for item in items:
        target = item.target.casefold()
        entry = swap.source.table.get(target)  # a target's sex, even when its pair was excluded
        if item.bias_type != "gender" or entry is None or entry[0] != "gender" \
                or target in GENDER_NON_NOUNS:
            continue
        position = entry[2]
        pattern = _target_pattern(item.target)
        found = [pattern.search(s) for s in (item.stereo, item.anti)]
        if not all(found):
            continue
        plural = _is_plural(target, vocabulary) or bool(found[0].group(2))
        pool = [w for w in pools.get((position, plural), []) if w != target]
        rng = random.Random(hashlib.sha256(f"{seed}\x1faugment\x1f{item.id}".encode()).digest())
        for word in rng.sample(pool, min(n, len(pool))):
            # The match's plural ending is dropped: `word` already has the match's number.
            def put(m: re.Match, w: str = word) -> str:
                return same_case(m.group(1), w)
            out.append((replace_target(pattern, item.stereo, put),
                        replace_target(pattern, item.anti, put), item.id))
    return out
