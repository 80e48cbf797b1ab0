"""Subject-swap training pairs: the same sentence about another group of the same bias type."""

from __future__ import annotations

import logging
from random import Random

import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.data.attribute_words import ATTRIBUTE_WORDS
from fairstamp.data.counterfactual import (
    group_swap,
    indefinite_article,
    subject_pairs,
    target_substitutions,
)
from fairstamp.data.items import BiasItem
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.training_text import framed_pairs, training_pairs
from fairstamp.errors import FairstampError

WORDS = SHARED_DATA / ATTRIBUTE_WORDS


def item(item_id, bias_type, target, stereo, anti):
    return BiasItem(id=item_id, source="test", bias_type=bias_type, target=target, stereo=stereo,
                    anti=anti)


def test_gender_sentences_swap_every_gendered_word_and_others_swap_the_target():
    swap = group_swap(WORDS, ["gender", "religion"])
    items = [item("g1", "gender", "schoolgirl", "The schoolgirl did her homework.",
                  "The schoolgirl skipped her homework."),
             item("r1", "religion", "Muslim", "Muslims are violent.", "Muslims are peaceful."),
             item("r2", "religion", "Bible", "The Bible is old.", "The Bible is new.")]
    pairs = {(a, b) for a, b, _ in subject_pairs(items, swap)}
    assert ("The schoolgirl did her homework.", "The schoolboy did his homework.") in pairs
    # Another *edited* target of the same type, the plural ending kept.
    assert ("Muslims are violent.", "Bibles are violent.") in pairs
    assert ("The Bible is old.", "The Muslim is old.") in pairs
    assert len(pairs) == 6


def test_a_held_out_target_never_appears_by_name_in_non_gender_pairs():
    items = load_stereoset(bias_types=["race"])
    edited = [i for i in items if i.target != "Ethiopian"]
    pairs = subject_pairs(edited, group_swap(WORDS, ["race"]), seed=3)
    assert pairs and not any("Ethiopian" in b and "Ethiopian" not in a for a, b, _ in pairs)
    assert subject_pairs(edited, group_swap(WORDS, ["race"]), seed=3) == pairs


def test_training_pairs_keep_the_items_own_pairs_first_for_the_checks():
    items = load_stereoset(bias_types=["gender"], limit=10)
    swap = group_swap(WORDS, ["gender"])
    attribute, trained, first = training_pairs(items, 1, "attribute")
    assert attribute == framed_pairs(items, 1) and trained == list(range(20)) and first == 20
    subject, trained, first = training_pairs(items, 1, "subject", swap)
    assert subject[:10] == attribute[:10] and trained[0] == 10 and first == 10
    assert all(a != b for a, b, _ in subject[10:])
    both, trained, first = training_pairs(items, 1, "both", swap)
    assert both[:20] == attribute and both[20:] == subject[10:] and first == 20
    assert trained == list(range(len(both)))
    with pytest.raises(FairstampError, match="pairs must be one of attribute, subject, both"):
        training_pairs(items, 1, "target")


def test_a_stamp_trains_on_subject_swap_pairs_and_checks_the_items_own(tiny_tokenizer):
    from fairstamp.fast.train import FitConfig, fit_stamp
    from test_fast import tiny

    items = load_stereoset(bias_types=["gender"], limit=12)
    swap = group_swap(WORDS, ["gender"])
    settings = dict(width=8, max_steps=4, check_every=2, batch_pairs=8, batch_kl=4, framings=1,
                    lr=1e-2, min_steps=100)
    for kind in ("subject", "both"):
        loaded = tiny(tiny_tokenizer)
        result = fit_stamp(loaded, items, 1, retention_sentences=["Christians celebrate Easter."],
                           group_swap=swap, config=FitConfig(pairs=kind, **settings))
        assert [h["step"] for h in result.history] == [2, 4]
        assert result.stamp.config.training["pairs"] == kind
    with pytest.raises(FairstampError, match="needs the group words"):
        fit_stamp(tiny(tiny_tokenizer), items, 1, config=FitConfig(pairs="subject", **settings))
    with pytest.raises(FairstampError, match="pairs must be one of"):
        FitConfig(pairs="targets")
    with pytest.raises(FairstampError, match="subject_score must be one of"):
        FitConfig(subject_score="span")


def test_subject_pairs_scored_on_their_common_suffix():
    from fairstamp.training.loop import _suffix_starts

    # Pair 0 is an attribute pair (whole sentences); pair 1 differs in its second token (the
    # common suffix is its last two tokens); pair 2 differs in its last token (no suffix).
    pair_ids = [([0, 5, 6, 7], [0, 5, 6, 8]), ([0, 1, 2, 3], [0, 9, 9, 2, 3]), ([0, 4], [0, 5])]
    starts, trained = _suffix_starts(pair_ids, 1, [0, 1, 2])
    assert starts == [1, 1, 2, 3, 1, 1] and trained == [0, 1]
    # Identical sentences: every token after start-of-text is common suffix.
    starts, _ = _suffix_starts([([0, 3, 4], [0, 3, 4])], 0, [0])
    assert starts == [1, 1]


def test_a_stamp_trains_on_subject_suffixes_and_the_scores_read_only_them(tiny_tokenizer):
    import torch

    from fairstamp.fast.train import FitConfig, fit_stamp
    from fairstamp.scoring.scorer import Scorer
    from fairstamp.scoring.upper import UpperForward
    from fairstamp.training.loop import _scores, _Sentences
    from test_fast import tiny

    loaded = tiny(tiny_tokenizer)
    scorer = Scorer.from_loaded(loaded, progress=False)
    ids = [scorer.encode("The mother was caring."), scorer.encode("The father was caring.")]
    upper = UpperForward(loaded.model, loaded.arch, 1)
    with torch.no_grad():
        whole = _scores(upper, _Sentences(ids), [0, 1], scorer.pad_token_id, "cpu", 10_000)
        start = len(ids[0]) - 2  # the last two tokens only
        tail = _scores(upper, _Sentences(ids, start=[start, start]), [0, 1],
                       scorer.pad_token_id, "cpu", 10_000)
        spans = scorer.token_logprobs(ids, [start, start])
    assert not torch.allclose(whole, tail)
    assert tail.tolist() == pytest.approx([s.mean for s in spans], abs=1e-5)
    items = load_stereoset(bias_types=["gender"], limit=12)
    result = fit_stamp(tiny(tiny_tokenizer), items, 1, group_swap=group_swap(WORDS, ["gender"]),
                       config=FitConfig(pairs="subject", subject_score="suffix", width=8,
                                        max_steps=2, check_every=2, batch_pairs=8, batch_kl=4,
                                        framings=1, min_steps=100))
    assert result.stamp.config.training["subject_score"] == "suffix"


def test_target_augmentation_keeps_sex_number_and_the_items_own_pairs_first():
    swap = group_swap(WORDS, ["gender"])
    items = [item("m", "gender", "mother", "The mother was caring.", "The mother was harsh."),
             item("g", "gender", "gentlemen", "Gentlemen are polite.", "Gentlemen are rude."),
             item("s", "gender", "schoolgirl", "Schoolgirls are shy.", "Schoolgirls are loud."),
             item("h", "gender", "herself", "She sees herself as weak.",
                  "She sees herself as strong.")]
    out = target_substitutions(items, swap, 3, seed=1)
    by_item = {}
    for stereo, anti, item_id in out:
        by_item.setdefault(item_id, []).append((stereo, anti))
    assert set(by_item) == {"m", "g", "s"}  # a pronoun target is never replaced
    female = {w for w in swap.table if swap.table[w][0] == "gender" and swap.table[w][2] == 1}
    for stereo, anti in by_item["m"]:
        word = stereo.split()[1]
        assert word in female and word != "mother" and anti == f"The {word} was harsh."
        assert not word.endswith("s")  # singular stays singular
    for stereo, _ in by_item["g"]:
        assert swap.table[stereo.split()[0].lower()][2] == 0  # male, and plural like the target
    assert all(s.split()[0].lower().endswith(("s", "men")) for s, _ in by_item["s"])
    assert all(s[0].isupper() for s, _ in by_item["s"])  # the sentence's case is kept
    assert target_substitutions(items, swap, 3, seed=1) == out  # seeded
    assert len({s for s, _ in by_item["m"]}) == 3  # drawn without replacement

    pairs, trained, first = training_pairs(items, 1, "attribute", swap, seed=1, augment=3)
    assert pairs[:8] == framed_pairs(items, 1) and pairs[8:] == out
    assert trained == list(range(len(pairs))) and first == len(pairs)
    with pytest.raises(FairstampError, match="needs the group words"):
        training_pairs(items, 1, "attribute", None, augment=3)
    with pytest.raises(FairstampError, match="not subject"):
        training_pairs(items, 1, "subject", swap, augment=3)


def test_a_replaced_target_takes_the_article_its_replacement_needs():
    assert [indefinite_article(w) for w in ("aunt", "Uncle", "father", "European", "Ukrainian",
                                            "Arab")] == ["an", "an", "a", "a", "a", "an"]
    swap = group_swap(WORDS, ["gender", "race"])
    items = [item("m", "gender", "mother", "A mother is caring. She is a mother.",
                  "A mother is cold. She is a mother."),
             item("r", "race", "Russian", "A Russian is cold.", "A Russian is warm."),
             item("e", "race", "Arab", "An Arab is rich.", "An Arab is poor.")]
    # Every female singular noun, in both sentences: the article follows the new word, in the
    # original's case.
    for stereo, anti, _ in target_substitutions(items[:1], swap, 40):
        word = stereo.split()[1]
        article = indefinite_article(word)
        assert stereo == f"{article.capitalize()} {word} is caring. She is {article} {word}."
        assert anti.startswith(f"{article.capitalize()} {word} is cold.")
    assert {"An aunt is caring. She is an aunt."} <= {
        s for s, _, _ in target_substitutions(items[:1], swap, 40)}
    pairs = {(a, b) for a, b, _ in subject_pairs(items[1:], swap)}
    assert ("A Russian is cold.", "An Arab is cold.") in pairs
    assert ("An Arab is rich.", "A Russian is rich.") in pairs
    # The word swap (CDA's, and the pairs' fallback) goes through the same replacement.
    religion = group_swap(WORDS, ["religion"])
    swapped = {religion.counterfactual("An imam prays.", Random(k)) for k in range(20)}
    assert swapped and all(s.startswith("A ") for s in swapped), swapped
    assert group_swap(WORDS, ["gender"]).counterfactual("An uncle and a boy.", Random(0)) == \
        "An aunt and a girl."


def test_a_swap_without_held_out_targets_never_writes_them():
    swap = group_swap(WORDS, ["gender"])
    held = swap.without(["mother", "gentlemen"])
    for word in ("mother", "mothers", "father", "gentlemen", "gentleman"):
        assert word not in held.table
    assert held.source is swap and swap.without(["not-a-group-word"]) is swap
    items = [item("s", "gender", "sister", "My sister is caring.", "My sister is cold.")]
    written = " ".join(a for a, _, _ in target_substitutions(items, held, 40)).lower().split()
    assert written and not {"mother", "mothers", "father"} & set(written)
    # A target whose counterpart was dropped keeps its sex through the source swap.
    items = [item("f", "gender", "father", "The father is strong.", "The father is weak.")]
    assert target_substitutions(items, held, 2)
    assert held.counterfactual("The father is strong.", Random(0)) is None


def test_counterfactual_prefixes_are_the_words_before_the_attribute_about_another_group():
    from fairstamp.data.counterfactual import counterfactual_prefixes, shared_words

    assert shared_words("The mother was caring.", "The mother was harsh.") == "The mother was"
    assert shared_words("The mother was care.", "The mother was cart.") == "The mother was"
    assert shared_words("Caring mothers.", "Harsh mothers.") == ""
    swap = group_swap(WORDS, ["gender", "religion"])
    items = [item("g1", "gender", "mother", "The mother was caring.", "The mother was harsh."),
             item("g2", "gender", "mother", "Caring is the mother.", "Harsh is the mother."),
             item("r1", "religion", "Muslim", "Muslims are violent.", "Muslims are peaceful."),
             item("r2", "religion", "Bible", "The Bible is old.", "The Bible is new.")]
    assert counterfactual_prefixes(items, swap) == [
        ("The mother was", "The father was", "g1"), ("Muslims are", "Bibles are", "r1"),
        ("The Bible is", "The Muslim is", "r2")]
    # A swap without a held-out pair never writes it (and then has nothing to swap here).
    assert counterfactual_prefixes(items[:1], swap.without(["father"])) == []


#: L_c on the tiny model: its JS is ~1e-4 nats, so δ must be large to weigh against L_e.
L_C_SETTINGS = dict(width=8, max_steps=12, check_every=4, batch_pairs=8, batch_kl=4, framings=1,
                    lr=3e-3, min_steps=100, keep_best=False, counterfactual_weight=1e4)


def l_c_case(tiny_tokenizer, **config):
    """12 StereoSet gender items, their gender swap, a tiny model, its scorer and L_c's pairs
    under FitConfig(L_C_SETTINGS + `config`), compared over the whole vocabulary less the group
    words."""
    from fairstamp.fast.train import FitConfig
    from fairstamp.scoring import Scorer
    from fairstamp.scoring.upper import UpperForward
    from fairstamp.training.loop import _counterfactual_set
    from test_fast import tiny

    items = load_stereoset(bias_types=["gender"], limit=12)
    swap = group_swap(WORDS, ["gender"])
    loaded = tiny(tiny_tokenizer)
    scorer = Scorer.from_loaded(loaded, progress=False)
    cf = _counterfactual_set(scorer, items, swap, FitConfig(**{**L_C_SETTINGS, **config}))
    cf.restrict(None, UpperForward(loaded.model, loaded.arch, 1).vocab_size())
    return items, swap, loaded, scorer, cf


def l_c_trained(tiny_tokenizer, items, swap, **config):
    """A fresh tiny model with a stamp at layer 1 trained under L_C_SETTINGS + `config`, and
    how training went."""
    from fairstamp.fast.train import FitConfig, fit_stamp
    from test_fast import tiny

    model = tiny(tiny_tokenizer)
    run = fit_stamp(model, items, 1, retention_sentences=["Christians celebrate Easter."],
                    group_swap=swap, config=FitConfig(**{**L_C_SETTINGS, **config}))
    return model, run


def l_c_of(model, cf, pad) -> float:
    """L_c over every pair of `cf` on `model` (the stamp's layer: 1), without gradients."""
    from fairstamp.scoring.upper import UpperForward
    from fairstamp.training.loop import _counterfactual_loss

    with torch.no_grad():
        return float(_counterfactual_loss(UpperForward(model.model, model.arch, 1), cf,
                                          range(len(cf.sents.ids) // 2), pad, model.device))


def test_l_c_brings_the_distributions_after_swapped_prefixes_together(tiny_tokenizer):
    from fairstamp.fast.train import FitConfig, fit_stamp
    from test_fast import tiny

    items, swap, loaded, scorer, cf = l_c_case(tiny_tokenizer)
    pad = scorer.pad_token_id
    # Group-word tokens are left out of the compared distributions.
    he = tiny_tokenizer(" he", add_special_tokens=False)["input_ids"][0]
    assert he in cf.group_tokens.tolist() and he not in cf.keep.tolist()
    before = l_c_of(loaded, cf, pad)
    # The same training without L_c, from the same model and seed: L_e alone does not do it.
    plain, _ = l_c_trained(tiny_tokenizer, items, swap, counterfactual_weight=0.0)
    model, result = l_c_trained(tiny_tokenizer, items, swap)
    assert "counterfactual_js" in result.history[-1]
    # measured: 6e-6 against 5.6e-5
    assert l_c_of(model, cf, pad) < 0.25 * min(before, l_c_of(plain, cf, pad))
    with pytest.raises(FairstampError, match="counterfactual_weight > 0 needs the group words"):
        fit_stamp(tiny(tiny_tokenizer), items, 1,
                  config=FitConfig(counterfactual_weight=1.0, max_steps=2))
    with pytest.raises(FairstampError, match="loss weights must be >= 0: counterfactual_weight"):
        FitConfig(counterfactual_weight=-1.0)


def test_the_mixture_target_anchors_both_distributions_to_the_originals_mixture(tiny_tokenizer):
    """counterfactual_target="mixture": L_c is ½(KL(m₀‖p) + KL(m₀‖q)) with m₀ the original's
    mixture; it is zero only where both distributions are m₀, and training with it ends nearer
    m₀ than training with the JS target, which lets the pair meet anywhere."""
    from fairstamp.fast.train import FitConfig
    from fairstamp.scoring.upper import UpperForward
    from fairstamp.training.loop import _mixture, _prefix_logprobs

    items, swap, loaded, scorer, cf = l_c_case(tiny_tokenizer)
    pad = scorer.pad_token_id
    upper = UpperForward(loaded.model, loaded.arch, 1)
    everything = range(len(cf.sents.ids) // 2)
    with torch.no_grad():
        cf.anchor(upper, pad, loaded.device, chunk=5)
        p0, q0 = _prefix_logprobs(upper, cf, everything, pad, loaded.device)
    # The hand-computed value at the original model.
    m0 = _mixture(p0, q0)
    kl = lambda a, b: (a.exp() * (a - b)).sum(-1)  # noqa: E731
    expected = float((0.5 * (kl(m0, p0) + kl(m0, q0))).mean())
    at_original = l_c_of(loaded, cf, pad)
    assert torch.allclose(cf.mixture, m0, atol=1e-6)
    # (float32 sums of ~1e-5 terms; the anchor was computed 5 pairs per pass)
    assert at_original == pytest.approx(expected, rel=1e-3) and at_original > 0

    def distance_to_mixture(target):
        model, run = l_c_trained(tiny_tokenizer, items, swap, counterfactual_target=target)
        # The history names the term as trained: a JS divergence, or KLs from the anchor.
        key = "counterfactual_kl" if target == "mixture" else "counterfactual_js"
        assert key in run.history[-1]
        with torch.no_grad():
            p, q = _prefix_logprobs(UpperForward(model.model, model.arch, 1), cf, everything,
                                    pad, model.device)
            return float((0.5 * (kl(m0, p) + kl(m0, q))).mean())

    anchored, free = distance_to_mixture("mixture"), distance_to_mixture("each_other")
    assert anchored < 0.5 * free  # measured: 1.2e-4 against 5.9e-3 (7.6e-5 at the original)
    with pytest.raises(FairstampError, match="counterfactual_target must be one of"):
        FitConfig(counterfactual_target="anywhere")


def test_l_c_is_on_by_default_only_where_the_edit_has_group_words_to_swap(caplog):
    from fairstamp.fast.train import FitConfig
    from fairstamp.training.loop import AUTO_COUNTERFACTUAL_WEIGHT

    gender = load_stereoset(bias_types=["gender"], limit=12)
    profession = load_stereoset(bias_types=["profession"], limit=12)
    swap = group_swap(WORDS, ["gender"])
    auto = FitConfig()  # FAST: auto; the shared loop (FT-L) keeps 0
    assert auto.counterfactual_weight is None and auto.needs_group_words is None
    assert auto.counterfactual_delta(gender, swap) == AUTO_COUNTERFACTUAL_WEIGHT
    assert auto.counterfactual_delta(gender, None) == 0.0  # no attribute-words file
    with caplog.at_level(logging.WARNING, logger="fairstamp.training.loop"):
        FitConfig(counterfactual_templates=True).counterfactual_delta(gender, None)
    assert "counterfactual_templates ignored: L_c is off" in caplog.text
    # A profession edit gets no swap (training_text builds one for gender, race, religion).
    assert auto.counterfactual_delta(profession, None) == 0.0
    assert FitConfig(counterfactual_weight=0.0).counterfactual_delta(gender, swap) == 0.0
    given = FitConfig(counterfactual_weight=1.5)
    assert given.counterfactual_delta(profession, swap) == 1.5
    assert given.needs_group_words == "counterfactual_weight > 0"
    from fairstamp.methods.finetune import FineTuneConfig  # a baseline: as published, no L_c

    assert FineTuneConfig().counterfactual_delta(gender, swap) == 0.0


def test_counterfactual_types_draw_l_c_pairs_from_those_bias_types_only(tiny_tokenizer, caplog):
    """counterfactual_types=("gender",) on a gender + race edit: L_c's pairs are exactly those of
    the gender items (no nationality swaps); a race edit then has no L_c by default, and asking
    for it anyway, or for a type nothing swaps, is refused."""
    from fairstamp.data.counterfactual import counterfactual_prefixes
    from fairstamp.fast.train import FitConfig
    from fairstamp.methods import get_method
    from fairstamp.scoring import Scorer
    from fairstamp.training.loop import AUTO_COUNTERFACTUAL_WEIGHT, _counterfactual_set
    from test_fast import tiny

    gender = load_stereoset(bias_types=["gender"], limit=12)
    race = load_stereoset(bias_types=["race"], limit=12)
    swap = group_swap(WORDS, ["gender", "race"])
    assert counterfactual_prefixes(race, swap)  # race items do have pairs to swap
    scorer = Scorer.from_loaded(tiny(tiny_tokenizer), progress=False)
    only = FitConfig(counterfactual_weight=1.0, counterfactual_types=("gender",))
    mixed = _counterfactual_set(scorer, [*race, *gender], swap, only)
    assert mixed.sents.ids == _counterfactual_set(
        scorer, gender, swap, FitConfig(counterfactual_weight=1.0)).sents.ids
    auto = FitConfig(counterfactual_types=("gender",))
    assert auto.counterfactual_delta([*race, *gender], swap) == AUTO_COUNTERFACTUAL_WEIGHT
    with caplog.at_level(logging.INFO, logger="fairstamp.training.loop"):
        assert auto.counterfactual_delta(race, swap) == 0.0
    assert "L_c off: the edited items of gender name no group words to swap" in caplog.text
    with pytest.raises(FairstampError, match="no edited item of gender names a group word"):
        _counterfactual_set(scorer, race, swap, only)
    # A recipe string as benchmarks/generalisation.py passes it.
    assert get_method("fast", counterfactual_types="gender,race").config.counterfactual_types \
        == ("gender", "race")
    for bad, message in [(dict(counterfactual_types=("profession",)), "not profession"),
                         (dict(counterfactual_types=("gender",), counterfactual_weight=0.0),
                          "counterfactual_weight 0 turns off")]:
        with pytest.raises(FairstampError, match=message):
            FitConfig(**bad)


def test_a_validation_slice_keeps_its_targets_out_of_the_swapped_prefixes(tiny_tokenizer):
    from fairstamp.fast.train import FitConfig, fit_stamp
    from fairstamp.training.loop import validation_split
    from test_fast import tiny

    items = load_stereoset(bias_types=["gender"], limit=80)
    trained, validation = validation_split(items, 0.3)
    aside = sorted({i.target for i in validation})
    swap = group_swap(WORDS, ["gender"])
    # schoolboy is set aside and schoolgirl trained: the whole swap would write "The schoolboy".
    assert "schoolboy" in aside and "schoolgirl" in {i.target for i in trained}
    settings = dict(width=8, max_steps=4, check_every=0, batch_pairs=8, batch_kl=4, framings=1,
                    lr=1e-2, min_steps=100, keep_best=False, counterfactual_weight=3.0)

    def stamp(chosen, words, **extra):
        loaded = tiny(tiny_tokenizer)
        result = fit_stamp(loaded, chosen, 1, retention_sentences=["Christians celebrate Easter."],
                           group_swap=words, config=FitConfig(**settings, **extra))
        return list(result.stamp.module.state_dict().values())

    # The set-aside targets' words are out of L_c's prefixes: training with the slice is training
    # on the other items with a swap that never writes them, bit for bit ...
    with_slice = stamp(items, swap, validation_fraction=0.3)
    assert all(torch.equal(a, b) for a, b in zip(with_slice, stamp(trained, swap.without(aside))))
    # ... and not with the whole swap, which writes them.
    assert not all(torch.equal(a, b) for a, b in zip(with_slice, stamp(trained, swap)))


def test_templated_prefixes_pair_every_gender_noun_and_he_and_never_a_held_out_target(
        tiny_tokenizer):
    from fairstamp.data.counterfactual import PREFIX_TEMPLATES, template_prefixes
    from fairstamp.fast.train import FitConfig
    from fairstamp.scoring import Scorer
    from fairstamp.training.loop import _counterfactual_set
    from test_fast import tiny

    swap = group_swap(WORDS, ["gender"])
    pairs = [(a, b) for a, b, _ in template_prefixes(swap)]
    assert ("The uncle worked as a", "The aunt worked as a") in pairs
    assert ("He had always been good at", "She had always been good at") in pairs
    assert ("After school, the schoolboy wanted to become a",
            "After school, the schoolgirl wanted to become a") in pairs
    # One pair per gender tuple's first word and template; no pronoun but "he", no title.
    assert len(pairs) == len(set(pairs)) and len(pairs) % len(PREFIX_TEMPLATES) == 0
    words = {w for a, b in pairs for w in f"{a} {b}".lower().replace(",", "").split()}
    assert not {"his", "him", "mr.", "sir", "male", "himself"} & words
    held = {w for a, b, _ in template_prefixes(swap.without(["mother"]))
            for w in f"{a} {b}".lower().split()}
    assert "father" not in held and "mother" not in held and "aunt" in held
    assert template_prefixes(group_swap(WORDS, ["religion"])) == []
    # L_c draws from the items' prefix pairs and, with the option, the templated ones after them.
    scorer = Scorer.from_loaded(tiny(tiny_tokenizer), progress=False)
    items = load_stereoset(bias_types=["gender"], limit=12)
    plain = _counterfactual_set(scorer, items, swap, FitConfig(counterfactual_weight=1.0))
    both = _counterfactual_set(scorer, items, swap, FitConfig(counterfactual_weight=1.0,
                                                              counterfactual_templates=True))
    assert len(both.sents.ids) == len(plain.sents.ids) + 2 * len(pairs)
    assert both.sents.ids[:len(plain.sents.ids)] == plain.sents.ids
    with pytest.raises(FairstampError, match="counterfactual_weight 0 turns off"):
        FitConfig(counterfactual_weight=0.0, counterfactual_templates=True)
    religion = load_stereoset(bias_types=["religion"], limit=12)
    rswap = group_swap(WORDS, ["religion"])
    assert len(_counterfactual_set(scorer, religion, rswap, FitConfig(
        counterfactual_weight=1.0, counterfactual_templates=True)).sents.ids) == len(
        _counterfactual_set(scorer, religion, rswap, FitConfig(counterfactual_weight=1.0))
        .sents.ids)


def test_substituted_prefixes_are_the_items_own_prefixes_about_other_gender_nouns(
        tiny_tokenizer, caplog):
    from fairstamp.data.counterfactual import counterfactual_prefixes, substituted_prefixes
    from fairstamp.fast.train import FitConfig
    from fairstamp.scoring import Scorer
    from fairstamp.training.loop import _counterfactual_set
    from test_fast import tiny

    swap = group_swap(WORDS, ["gender"])
    items = load_stereoset(bias_types=["gender"], limit=12)
    own = {i: (a, b) for a, b, i in counterfactual_prefixes(items, swap)}
    assert own["0f6a8b9cb19a45b66f91093a0cad0129"] == ("A mother is", "A father is")
    pairs = substituted_prefixes(items, swap, 2)
    # The item's own words, its target replaced by another noun of its sex and number, and the
    # same words about that noun's counterpart; "<id>~k" for the k-th substitute.
    assert ("Many sisters are found to be", "Many brothers are found to be",
            "94268d6b78272a4c557dd49e6d852341~1") in pairs
    for a, b, key in pairs:
        item_id, _, k = key.partition("~")
        assert k in ("1", "2") and a != own[item_id][0]
        # One word differs, the target, and the "a"/"an" before it where the new word needs
        # the other ("A mother is" → "An aunt is").
        words, original = a.split(), own[item_id][0].split()
        assert len(words) == len(original) and a != b
        differ = [i for i, (x, y) in enumerate(zip(words, original)) if x != y]
        assert len(differ) == 1 or (differ == [differ[0], differ[0] + 1]
                                    and original[differ[0]].lower() in ("a", "an"))
    # Pronoun targets (herself, she) have no noun to substitute.
    assert {key.partition("~")[0] for _, _, key in pairs} < set(own)
    assert substituted_prefixes(items, swap, 2, seed=1) != pairs
    assert substituted_prefixes(items, swap, 2) == pairs
    assert substituted_prefixes(items, swap, 0) == []
    # A swap without a held-out target's pair never names either word.
    held = {w for a, b, _ in substituted_prefixes(items, swap.without(["sister"]), 6)
            for w in f"{a} {b}".lower().split()}
    assert not {"sister", "sisters", "brother", "brothers"} & held
    scorer = Scorer.from_loaded(tiny(tiny_tokenizer), progress=False)
    plain = _counterfactual_set(scorer, items, swap, FitConfig(counterfactual_weight=1.0))
    more = _counterfactual_set(scorer, items, swap, FitConfig(counterfactual_weight=1.0,
                                                              counterfactual_substitutes=2))
    assert more.sents.ids[:len(plain.sents.ids)] == plain.sents.ids  # the items' own first
    assert more.sents.ids[len(plain.sents.ids):] == [scorer.encode(t) for a, b, _ in pairs
                                                     for t in (a, b)]
    # An edit with no gender nouns to substitute trains on its own pairs, and says so.
    religion = load_stereoset(bias_types=["religion"], limit=12)
    rswap = group_swap(WORDS, ["religion"])
    with caplog.at_level(logging.WARNING, logger="fairstamp.training.loop"):
        alone = _counterfactual_set(scorer, religion, rswap, FitConfig(
            counterfactual_weight=1.0, counterfactual_substitutes=2))
    assert "no substituted prefixes" in caplog.text
    assert alone.sents.ids == _counterfactual_set(scorer, religion, rswap, FitConfig(
        counterfactual_weight=1.0)).sents.ids
    for bad, message in [(dict(counterfactual_weight=0.0), "counterfactual_weight 0 turns off"),
                         (dict(counterfactual_span="sentence"), "counterfactual_span='prefix'"),
                         (dict(counterfactual_substitutes=-1), "must be >= 0")]:
        with pytest.raises(FairstampError, match=message):
            FitConfig(**{"counterfactual_substitutes": 2, **bad})


def test_the_sentence_span_compares_every_position_after_the_swapped_words(tiny_tokenizer):
    """counterfactual_span="sentence": L_c reads each item's two sentences and their group swaps
    at every position from the last swapped token to the one before the end (those that predict
    the words the two share), each pair's mean weighing the same; training with it brings those
    positions closer than training with the prefix span, which reads one of them."""
    from fairstamp.fast.train import FitConfig

    items, swap, loaded, scorer, cf = l_c_case(tiny_tokenizer, counterfactual_span="sentence")
    pad = scorer.pad_token_id
    texts = [scorer.encode(t) for a, b, _ in subject_pairs(items, swap) for t in (a, b)]
    assert cf.sents.ids == texts  # every swapped sentence of these items has a common suffix
    for a, b, ca, cb in zip(cf.sents.ids[0::2], cf.sents.ids[1::2], cf.cols[0::2],
                            cf.cols[1::2]):
        assert len(ca) == len(cb) and ca[-1] == len(a) - 2 and cb[-1] == len(b) - 2
        assert a[ca[0]] != b[cb[0]]  # the first position is the last swapped token ...
        assert a[ca[0] + 1:] == b[cb[0] + 1:]  # ... and every token it predicts is shared

    def by_hand(model):
        """Each pair's mean JS over its positions by full forward passes, then the mean."""
        per_pair = []
        with torch.no_grad():
            for i in range(len(cf.sents.ids) // 2):
                lps = [torch.log_softmax(model.model(torch.tensor([cf.sents.ids[j]])).logits[
                    0, cf.cols[j]][:, cf.keep], dim=-1) for j in (2 * i, 2 * i + 1)]
                m = torch.logaddexp(*lps) - torch.log(torch.tensor(2.0))
                js = 0.5 * sum((lp.exp() * (lp - m)).sum(-1) for lp in lps)
                per_pair.append(float(js.mean()))
        return sum(per_pair) / len(per_pair)

    assert l_c_of(loaded, cf, pad) == pytest.approx(by_hand(loaded), rel=1e-4)
    assert l_c_of(loaded, cf, pad) > 0

    def trained(**config):
        model, run = l_c_trained(tiny_tokenizer, items, swap, **config)
        assert ("counterfactual_js" in run.history[-1]) == bool(run.counterfactual_weight)
        return l_c_of(model, cf, pad)

    sentence, prefix = trained(counterfactual_span="sentence"), trained()
    plain = trained(counterfactual_weight=0.0)
    # measured: 6.5e-5 against 5.1e-4 without L_c and 8.7e-5 with the prefix span (5.7e-4 before)
    assert sentence < 0.25 * plain and sentence < prefix
    with pytest.raises(FairstampError, match="counterfactual_span must be one of"):
        FitConfig(counterfactual_span="paragraph")
    with pytest.raises(FairstampError, match="use it with counterfactual_span='prefix'"):
        FitConfig(counterfactual_span="sentence", counterfactual_target="mixture")
