"""Paraphrases of bias items (the set Ω_P behind PS): read from a file, or made by rules.

**Files.** `load_paraphrase_file` reads JSON Lines keyed by item id, in either of two shapes:

- the public GPT paraphrases of StereoSet dev (`model_editing_for_debias/steroset.jsonl`, Yan et
  al. 2024): `sent_more_para` / `sent_less_para` hold newline-separated paraphrases of the stereo
  and anti sentence; line i of one is paired with line i of the other. What that file really
  holds is handled: blank lines and list markers (`1. `, `- `) are dropped; a side that is the
  API's `CONTENT_FILTER.` placeholder, or sides with different numbers of lines, give no pairs
  for that record (they cannot be paired reliably); pairs whose two sentences are identical (GPT
  sometimes paraphrased the difference away) are dropped. Its intersentence records are kept:
  their ids simply never match an intrasentence item.
- the SPEC shape `{"id", "paraphrases": [{"stereo", "anti"}, ...]}`, validated strictly.

**Rules** [ours]. `rule_paraphrases` rewrites an item whose id has no file paraphrase. The pair
is split into a common prefix, the differing span (the bias) and a common suffix, at word level;
every rule edits only the prefix and suffix, identically for both sentences, so the paraphrased
pair still differs in exactly the same span. The rules, in the order they are tried:

1. *Framing clause* `I heard that ...`: the sentence becomes a reported claim. The first word is
   lower-cased only when that is certainly right: a closed-class word (the, my, when, most, ...),
   a common noun from a short list (people, women, ...), or a word of the item's target written
   in lower case; `I`, titles (Mr, Dr) and acronyms keep their capital. Otherwise (a possible
   proper noun), and whenever the first word is inside the differing span, this rule is skipped.
2. *Synonyms*: a small table of near-synonyms for common function words and verbs (often ->
   frequently, think -> believe, a lot of -> lots of, ...), chosen so that the swap is grammatical
   in any context; the capital of a sentence-initial word is kept.
3. *Contractions*: `is not` <-> `isn't`, `they are` <-> `they're`, ... both ways in one pass;
   `X is`/`I am` contract only before a word (never clause-final), and `'s` expands only where it
   cannot mean `has` (not before `been`/`got`); ambiguous `'d` is left alone.
4. *Trailing clause* `..., or so I heard.`, replacing the final full stop (or added after a final
   word); skipped for questions, exclamations and quotes.
5. *Framing clauses* `Someone told me that ...` and `It is said that ...`, as rule 1.
6. *Colon framing* `Here is what I heard: ...`, `Someone once said: ...`, `Someone wrote: ...`: no
   casing change, so they apply to every sentence, also when the span starts the sentence.
7. If fewer than `n` of those applied: a word-level rule (2 or 3) combined with a framing.

Tense is not changed: without a parser a tense change breaks agreement with the other verbs.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fairstamp.data.counterfactual import indefinite_article
from fairstamp.data.items import BiasItem, Paraphrase
from fairstamp.data.readers import iter_jsonl
from fairstamp.data.validate import (
    IdTracker,
    check_distinct,
    optional_str,
    require_list,
    require_object,
    require_str,
)
from fairstamp.errors import DataError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Words and spans

Token = tuple[str, str]  # (whitespace before the token, token text)
_TOKEN = re.compile(r"(\s*)(\w+(?:['’]\w+)*|[^\w\s])")


def tokenize(text: str) -> list[Token]:
    """Words (with inner apostrophes) and single punctuation marks, each with the whitespace
    before it, so that joining them gives the stripped text back exactly."""
    return [(m.group(1), m.group(2)) for m in _TOKEN.finditer(text.strip())]


def _render(tokens: Sequence[Token]) -> str:
    return "".join(space + text for space, text in tokens)


@dataclass(frozen=True)
class SplitPair:
    """A pair as common prefix tokens + the two differing middles (raw text, with the
    whitespace around them) + common suffix tokens. The first suffix token's whitespace lives
    in the middles."""

    prefix: tuple[Token, ...]
    first_mid: str
    second_mid: str
    suffix: tuple[Token, ...]

    def render(self, prefix: Sequence[Token] | None = None,
               suffix: Sequence[Token] | None = None) -> tuple[str, str]:
        """Both sentences, with the prefix and/or suffix replaced; the middles never change."""
        prefix = self.prefix if prefix is None else prefix
        suffix = self.suffix if suffix is None else suffix
        head = _render(prefix)
        if prefix and not self.prefix:  # the middle starts the original sentence
            head += " "
        tail = (suffix[0][1] + _render(suffix[1:])) if suffix else ""
        return head + self.first_mid + tail, head + self.second_mid + tail


def split_pair(first: str, second: str) -> SplitPair:
    """Split two sentences at the longest common word prefix and suffix."""
    a, b = tokenize(first), tokenize(second)
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0  # suffix tokens must match text and inner whitespace; the first one's is not compared
    while (j < min(len(a), len(b)) - i and a[-1 - j][1] == b[-1 - j][1]
           and (j == 0 or a[-j][0] == b[-j][0])):
        j += 1

    def middle(tokens: list[Token]) -> str:
        inner = tokens[i:len(tokens) - j]
        text = _render(inner)
        if j:
            text += tokens[len(tokens) - j][0]
        return text

    return SplitPair(tuple(a[:i]), middle(a), middle(b), tuple(a[len(a) - j:]))


def differing_span(first: str, second: str) -> tuple[str, str]:
    """The words where two sentences differ (common word prefix and suffix removed), for each."""
    split = split_pair(first, second)
    return split.first_mid.strip(), split.second_mid.strip()


# --------------------------------------------------------------------------------------------
# Paraphrase files

_CONTENT_FILTER = "CONTENT_FILTER."  # what the GPT file holds where the API refused to answer
_LIST_MARKER = re.compile(r"^(?:\d+[.)]|[-*•])\s+")


def load_paraphrase_file(path: str | Path) -> dict[str, list[Paraphrase]]:
    """Paraphrases keyed by item id (`origin="file"`); ids whose record yields no usable pair
    are left out. See the module docstring for the two accepted shapes."""
    mapping: dict[str, list[Paraphrase]] = {}
    ids = IdTracker()
    dropped: Counter[str] = Counter()
    name = str(path)
    records = 0
    for name, number, obj in iter_jsonl(path):
        where = f"{name}:{number}"
        records += 1
        item_id = require_str(obj, "id", where)
        ids.add(item_id, where, f"line {number}")
        if "paraphrases" in obj:
            pairs = parse_pairs(obj, where)
        elif "sent_more_para" in obj or "sent_less_para" in obj:
            pairs = _gpt_record(obj, where, dropped)
        else:
            raise DataError(f"{where}: expected a field 'paraphrases' (a list of {{stereo, anti}}) "
                            "or 'sent_more_para' and 'sent_less_para'")
        if pairs:
            mapping[item_id] = pairs
    logger.info("%s: %d records, %d ids with paraphrases (%d pairs); skipped: %s", name, records,
                len(mapping), sum(map(len, mapping.values())),
                ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "nothing")
    return mapping


PARAPHRASE_ORIGINS = ("file", "rule")


def parse_pairs(obj: dict[str, Any], where: str) -> list[Paraphrase]:
    """The `paraphrases: [{"stereo", "anti", "origin"?}]` list of a SPEC §2 record, validated."""
    pairs = []
    for k, pair in enumerate(require_list(obj, "paraphrases", where)):
        pwhere = f"{where}: paraphrases[{k}]"
        pair = require_object(pair, pwhere)
        stereo, anti = require_str(pair, "stereo", pwhere), require_str(pair, "anti", pwhere)
        check_distinct(stereo, anti, pwhere)
        origin = optional_str(pair, "origin", pwhere) or "file"
        if origin not in PARAPHRASE_ORIGINS:
            raise DataError(f"{pwhere}: field 'origin' is {origin!r} "
                            f"(valid: {', '.join(PARAPHRASE_ORIGINS)})")
        pairs.append(Paraphrase(stereo, anti, origin=origin))
    return pairs


def _gpt_lines(text: str) -> list[str]:
    lines = (_LIST_MARKER.sub("", line.strip()) for line in text.split("\n"))
    return [line for line in lines if line]


def _gpt_record(obj: dict[str, Any], where: str, dropped: Counter[str]) -> list[Paraphrase]:
    stereo_lines = _gpt_lines(require_str(obj, "sent_more_para", where))
    anti_lines = _gpt_lines(require_str(obj, "sent_less_para", where))
    if _CONTENT_FILTER in stereo_lines or _CONTENT_FILTER in anti_lines:
        dropped["records with a CONTENT_FILTER placeholder"] += 1
        return []
    if len(stereo_lines) != len(anti_lines):
        dropped["records with unequal numbers of paraphrases"] += 1
        return []
    pairs = []
    for stereo, anti in zip(stereo_lines, anti_lines):
        if stereo == anti:
            dropped["identical pairs"] += 1
            continue
        pairs.append(Paraphrase(stereo, anti, origin="file"))
    return pairs


# --------------------------------------------------------------------------------------------
# Rule-based paraphraser

# Sentence-initial words that are certainly not proper nouns, so lower-casing them is right.
# Not here on purpose: conjunctions and interjections (`But`, `So`, `No,`) and auxiliaries
# (questions), after which `I heard that` would not be grammatical.
_LOWER_FIRST_WORDS = """
a an the this that these those my your his her its our their some any many most much more all
every each both few several one other another such he she it we they you someone somebody
everyone everybody anyone anybody something everything nothing he's she's it's we're they're
you're that's there's there when while if as after before because since although though once
until unless in on at for from with without by during despite upon about among between through
under over whenever wherever today sometimes often usually typically generally historically
unfortunately suddenly eventually meanwhile almost even just only lately recently people person
men women man woman children child kids kid boys girls boy girl parents society males females
male female lots coworkers classmates neighbors friends being
"""
_LOWER_FIRST = frozenset(_LOWER_FIRST_WORDS.split())
_KEEP_FIRST = frozenset({"mr", "mrs", "ms", "dr", "i"})

# Near-synonyms, chosen to be grammatical wherever the key occurs (keys: lower-case word tuples).
# A swap is skipped after `a`/`an` when it would need the other article, and `think` is not
# swapped before the particles that make it a phrasal verb (`think of` != `believe of`).
_SYNONYMS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("very",): ("really",),
    ("often",): ("frequently",),
    ("frequently",): ("often",),
    ("usually",): ("typically",),
    ("typically",): ("usually",),
    ("mostly",): ("mainly",),
    ("mainly",): ("mostly",),
    ("extremely",): ("incredibly",),
    ("perhaps",): ("maybe",),
    ("maybe",): ("perhaps",),
    ("almost",): ("nearly",),
    ("nearly",): ("almost",),
    ("quickly",): ("rapidly",),
    ("probably",): ("most", "likely"),
    ("everyone",): ("everybody",),
    ("everybody",): ("everyone",),
    ("someone",): ("somebody",),
    ("somebody",): ("someone",),
    ("nobody",): ("no", "one"),
    ("lots", "of"): ("a", "lot", "of"),
    ("because", "of"): ("due", "to"),
    ("think",): ("believe",),
    ("thinks",): ("believes",),
    ("enjoy",): ("like",),
    ("enjoys",): ("likes",),
    ("begin",): ("start",),
    ("begins",): ("starts",),
    ("began",): ("started",),
}
_PARTICLES = frozenset({"of", "about", "over", "through", "up", "back", "ahead", "out", "twice"})
_NOT_BEFORE = {("think",): _PARTICLES, ("thinks",): _PARTICLES}

_NEGATIONS = {
    "is": "isn't", "are": "aren't", "was": "wasn't", "were": "weren't", "do": "don't",
    "does": "doesn't", "did": "didn't", "will": "won't", "would": "wouldn't",
    "could": "couldn't", "should": "shouldn't", "has": "hasn't", "have": "haven't",
    "had": "hadn't", "must": "mustn't",
}
_EXPAND_NEGATION = {v: (k, "not") for k, v in _NEGATIONS.items()} | {
    "can't": ("cannot",), "cannot": ("can't",),
}
# Subject + verb contractions; they contract only before another word.
_SUBJECT_VERB = {
    ("i", "am"): "I'm", ("they", "are"): "they're", ("we", "are"): "we're",
    ("you", "are"): "you're", ("it", "is"): "it's", ("that", "is"): "that's",
    ("he", "is"): "he's", ("she", "is"): "she's", ("there", "is"): "there's",
}
_EXPAND_SUBJECT_VERB = {v.lower(): k for k, v in _SUBJECT_VERB.items()}
_HAS_NOT_IS = frozenset({"been", "got", "gotten", "had"})  # after these, 's means "has"


def _is_word(text: str) -> bool:
    return text[:1].isalnum() or text[:1] == "_"


def _norm(text: str) -> str:
    return text.lower().replace("’", "'")


def _cased(words: Sequence[str], like: str) -> list[str]:
    """Give the first replacement word the capital of the word it replaces."""
    out = list(words)
    if like[:1].isupper() and out[0] != "I":
        out[0] = out[0][:1].upper() + out[0][1:]
    elif like[:1].islower() and out[0][:1].isupper() and out[0] != "I" and not \
            out[0].startswith("I'"):
        out[0] = out[0][:1].lower() + out[0][1:]
    return out


def _retokened(original: Sequence[Token], start: int, words: Sequence[str]) -> list[Token]:
    """New tokens for `words`, the first keeping the whitespace of `original[start]`."""
    return [(original[start][0] if k == 0 else " ", w) for k, w in enumerate(words)]


def _can_swap(tokens: Sequence[Token], i: int, size: int, key: tuple[str, ...]) -> bool:
    new = _SYNONYMS[key][0]
    if i > 0 and _norm(tokens[i - 1][1]) in {"a", "an"} and \
            indefinite_article(key[0]) != indefinite_article(new):
        return False
    nxt = _norm(tokens[i + size][1]) if i + size < len(tokens) else ""
    return nxt not in _NOT_BEFORE.get(key, ())


def _synonyms(tokens: Sequence[Token]) -> list[Token] | None:
    out: list[Token] = []
    i, changed = 0, False
    longest = max(map(len, _SYNONYMS))
    while i < len(tokens):
        for size in range(min(longest, len(tokens) - i), 0, -1):
            key = tuple(_norm(t) for _, t in tokens[i:i + size])
            if key in _SYNONYMS and _can_swap(tokens, i, size, key):
                out += _retokened(tokens, i, _cased(_SYNONYMS[key], tokens[i][1]))
                i, changed = i + size, True
                break
        else:
            out.append(tokens[i])
            i += 1
    return out if changed else None


def _contractions(tokens: Sequence[Token]) -> list[Token] | None:
    out: list[Token] = []
    i, changed = 0, False
    while i < len(tokens):
        word = _norm(tokens[i][1])
        nxt = _norm(tokens[i + 1][1]) if i + 1 < len(tokens) else None
        after = tokens[i + 2][1] if i + 2 < len(tokens) else ""
        apostrophe = "’" if "’" in tokens[i][1] else "'"
        replacement: list[str] | None = None
        size = 1
        if nxt == "not" and word in _NEGATIONS:
            replacement, size = [_NEGATIONS[word]], 2
        elif (word, nxt) in _SUBJECT_VERB and _is_word(after):
            replacement, size = [_SUBJECT_VERB[(word, nxt)]], 2
        elif word in _EXPAND_NEGATION:
            replacement = [w.replace("'", apostrophe) for w in _EXPAND_NEGATION[word]]
        elif (word in _EXPAND_SUBJECT_VERB and nxt is not None and _is_word(nxt)
              and nxt not in _HAS_NOT_IS):
            subject, verb = _EXPAND_SUBJECT_VERB[word]
            replacement = ["I" if subject == "i" else subject, verb]
        if replacement is None:
            out.append(tokens[i])
            i += 1
            continue
        out += _retokened(tokens, i, _cased(replacement, tokens[i][1]))
        i, changed = i + size, True
    return out if changed else None


def _lower_first(word: str, target: str) -> str | None:
    """`word` as it should read after `I heard that`, or None when that is uncertain."""
    if not _is_word(word):
        return None
    if not word[0].isupper():  # lower case already, or a number
        return word
    low = _norm(word)
    if low in _KEEP_FIRST or low.startswith("i'") or (len(word) > 1 and word.isupper()):
        return word
    base = low[:-2] if low.endswith("'s") else low
    for target_word in target.split():
        if base in {target_word.lower(), target_word.lower() + "s", target_word.lower() + "es"}:
            return word if target_word[0].isupper() else word[0].lower() + word[1:]
    if low in _LOWER_FIRST:
        return word[0].lower() + word[1:]
    return None


# A framing rule: the new prefix tokens for a split pair and its target, or None if it does not
# apply.
_PrefixRule = Callable[[SplitPair, str], "tuple[Token, ...] | None"]


def _frame(words: str) -> _PrefixRule:
    """Rule: prefix the sentence with `words` (a clause ending in `that`)."""
    head = [("" if k == 0 else " ", w) for k, w in enumerate(words.split())]

    def rule(split: SplitPair, target: str) -> tuple[Token, ...] | None:
        if not split.prefix:
            return None
        lowered = _lower_first(split.prefix[0][1], target)
        if lowered is None:
            return None
        return (*head, (" ", lowered), *split.prefix[1:])

    return rule


def _colon_frame(words: str) -> _PrefixRule:
    """Rule: `words:` before the unchanged sentence (no casing decision needed)."""
    head = [("" if k == 0 else " ", w) for k, w in enumerate(words.split())] + [("", ":")]

    def rule(split: SplitPair, target: str) -> tuple[Token, ...] | None:
        if split.prefix:
            return (*head, (" ", split.prefix[0][1]), *split.prefix[1:])
        return tuple(head)

    return rule


_HEARD_TAIL = (("", ","), (" ", "or"), (" ", "so"), (" ", "I"), (" ", "heard"), ("", "."))


def _trailing_clause(split: SplitPair) -> tuple[Token, ...] | None:
    suffix = split.suffix
    if suffix and suffix[-1][1] == "." and not (len(suffix) > 1 and suffix[-2][1] == "."):
        if len(suffix) == 1:  # the full stop directly follows the span
            return _HEARD_TAIL
        return (*suffix[:-1], *_HEARD_TAIL)
    ends = (split.first_mid.rstrip()[-1:], split.second_mid.rstrip()[-1:])
    if not suffix and all(_is_word(e) for e in ends):
        return _HEARD_TAIL
    return None


_FRAMES: tuple[_PrefixRule, ...] = (
    _frame("I heard that"), _frame("Someone told me that"), _frame("It is said that"),
    _colon_frame("Here is what I heard"), _colon_frame("Someone once said"),
    _colon_frame("Someone wrote"),
)


def _word_rule(rule: Callable[[Sequence[Token]], list[Token] | None], split: SplitPair
               ) -> tuple[tuple[Token, ...], tuple[Token, ...]] | None:
    """Apply a word-level rule to prefix and suffix; None when it changes neither."""
    prefix, suffix = rule(split.prefix), rule(split.suffix)
    if prefix is None and suffix is None:
        return None
    return (tuple(split.prefix if prefix is None else prefix),
            tuple(split.suffix if suffix is None else suffix))


def rule_paraphrases(item: BiasItem, n: int = 3) -> tuple[Paraphrase, ...]:
    """Up to `n` deterministic rule-based paraphrases of an item (`origin="rule"`), each differing
    between stereo and anti in exactly the item's differing span. Fewer when fewer rules apply."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    split = split_pair(item.stereo, item.anti)
    target = item.target
    words = [w for w in (_word_rule(_synonyms, split), _word_rule(_contractions, split)) if w]
    heads = [rule(split, target) for rule in _FRAMES]
    singles = [(heads[0], split.suffix), *words, (split.prefix, _trailing_clause(split)),
               *((head, split.suffix) for head in heads[1:])]
    candidates = [(prefix, suffix) for prefix, suffix in singles
                  if prefix is not None and suffix is not None]
    for prefix, suffix in words:  # combinations, only reached when the single rules run out
        reframed = SplitPair(prefix, split.first_mid, split.second_mid, suffix)
        candidates += [(head, suffix) for head in (rule(reframed, target) for rule in _FRAMES)
                       if head is not None][:1]

    out: list[Paraphrase] = []
    seen = {(item.stereo.strip(), item.anti.strip())}
    for prefix, suffix in candidates:
        if len(out) >= n:
            break
        stereo, anti = split.render(prefix, suffix)
        if (stereo, anti) not in seen:
            seen.add((stereo, anti))
            out.append(Paraphrase(stereo, anti, origin="rule"))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Attaching


def attach_paraphrases(items: Iterable[BiasItem],
                       mapping: Mapping[str, Sequence[Paraphrase]] | None = None, *,
                       rule_fallback: bool = True, n_rule: int = 3) -> list[BiasItem]:
    """New items with `paraphrases` set: the file's where the id has some; else the item's own
    (e.g. from a user's bias file); else rule-based ones when `rule_fallback`."""
    mapping = mapping or {}
    counts: Counter[str] = Counter()
    out = []
    for item in items:
        if mapping.get(item.id):
            paraphrases, origin = tuple(mapping[item.id]), "file"
        elif item.paraphrases:
            paraphrases, origin = item.paraphrases, "kept"
        elif rule_fallback:
            paraphrases = rule_paraphrases(item, n_rule)
            origin = "rule" if paraphrases else "none"
        else:
            paraphrases, origin = (), "none"
        counts[origin] += 1
        out.append(replace(item, paraphrases=paraphrases))
    logger.info("paraphrases for %d items: %d from file, %d rule-based, %d kept their own, "
                "%d without", len(out), counts["file"], counts["rule"], counts["kept"],
                counts["none"])
    return out
