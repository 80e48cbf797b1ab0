"""Subject-swap training pairs: the same sentence about another group of the same bias type."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from fairstamp.data.attribute_words import ATTRIBUTE_WORDS
from fairstamp.data.counterfactual import group_swap, subject_pairs
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
    attribute, trained = training_pairs(items, 1, "attribute")
    assert attribute == framed_pairs(items, 1) and trained == list(range(20))
    subject, trained = training_pairs(items, 1, "subject", swap)
    assert subject[:10] == attribute[:10] and trained[0] == 10
    assert all(a != b for a, b, _ in subject[10:])
    both, trained = training_pairs(items, 1, "both", swap)
    assert both[:20] == attribute and both[20:] == subject[10:]
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
