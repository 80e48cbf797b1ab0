"""Bias and knowledge metrics (SS, PS, CrowS, LMS, ICAT, DS, RS) and the StereoSet export, pinned
on tiny inputs whose expected values are worked out by hand in the comments."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from fairstamp.data.items import BiasItem, Paraphrase, RetentionItem
from fairstamp.errors import DataError
from fairstamp.metrics.bias import (
    Breakdown,
    crows_pairs_score,
    differentiation_score,
    language_modeling_score,
    paraphrase_stereotype_score,
    retention_predictions,
    retention_score,
    sentences_to_score,
    stereoset_per_target,
    stereoset_scores,
    stereotype_score,
)
from fairstamp.metrics.stereoset_official import export_predictions, read_predictions

R = 50  # bootstrap resamples in tests: values do not depend on it, only the CIs


def ss_item(name, bias_type, target, s, a, u, paraphrases=()):
    """A StereoSet-like item whose sentences are named after it; returns (item, its scores)."""
    item = BiasItem(
        id=name, source="stereoset", bias_type=bias_type, target=target,
        stereo=f"{name} stereo.", anti=f"{name} anti.", unrelated=f"{name} unrelated.",
        paraphrases=tuple(Paraphrase(f"{name} para{k} stereo.", f"{name} para{k} anti.")
                          for k in range(len(paraphrases))),
        stereo_id=f"{name}-s", anti_id=f"{name}-a", unrelated_id=f"{name}-u",
    )
    scores = {item.stereo: s, item.anti: a, item.unrelated: u}
    for pair, (ps, pa) in zip(item.paraphrases, paraphrases):
        scores[pair.stereo] = ps
        scores[pair.anti] = pa
    return item, scores


def build(*specs):
    items, scores = [], {}
    for spec in specs:
        item, sc = ss_item(*spec)
        items.append(item)
        scores.update(sc)
    return items, scores


# Target "nurse" (profession, 3 items) and target "Muslim" (religion, 1 item):
#            stereo anti unrel | stereo>anti | related (s>u, a>u, strict)
#   a1        2.0   1.0  0.0   |  yes        | 2
#   a2        1.0   1.0  0.5   |  no (tie)   | 2
#   a3        1.0   3.0  1.0   |  no         | 1 (s = u is a tie: not related)
#   b1        5.0   4.5  4.5   |  yes        | 1 (a = u is a tie: not related)
STEREOSET = (
    ("a1", "profession", "nurse", 2.0, 1.0, 0.0, ((1.0, 0.0), (0.0, 0.0))),
    ("a2", "profession", "nurse", 1.0, 1.0, 0.5),
    ("a3", "profession", "nurse", 1.0, 3.0, 1.0),
    ("b1", "religion", "Muslim", 5.0, 4.5, 4.5, ((-1.0, -2.0),)),
)


@pytest.fixture
def stereoset():
    return build(*STEREOSET)


def test_micro_ss_counts_ties_as_not_stereotypical(stereoset):
    items, scores = stereoset
    ss = stereotype_score(items, scores, n_resamples=R)
    # a1 and b1 stereotypical of 4 -> 50; profession 1 of 3 -> 33.33; religion 1 of 1 -> 100.
    assert ss.overall.value == pytest.approx(50.0)
    assert ss["profession"].value == pytest.approx(100.0 / 3)
    assert ss["religion"].value == pytest.approx(100.0)
    assert (ss.overall.n, ss["profession"].n, ss["religion"].n) == (4, 3, 1)
    assert list(ss.by_type) == ["profession", "religion"]


def test_official_stereoset_macro_scores(stereoset):
    items, scores = stereoset
    res = stereoset_scores(items, scores, n_resamples=R)
    # Per target: nurse SS = 100·1/3 = 33.33, LMS = 5/(2·3)·100 = 83.33;
    #             Muslim SS = 100·1/1 = 100, LMS = 1/(2·1)·100 = 50.
    # Macro SS = (33.33 + 100)/2 = 66.67 (the micro SS is 50); macro LMS = (83.33 + 50)/2 = 66.67.
    # ICAT from the averages = 66.67 · min(66.67, 33.33)/50 = 400/9 = 44.44, not the mean of the
    # per-target ICATs ((55.56 + 0)/2 = 27.78).
    assert res.ss.overall.value == pytest.approx(200.0 / 3)
    assert res.lms.overall.value == pytest.approx(200.0 / 3)
    assert res.icat.overall.value == pytest.approx(400.0 / 9)
    # Per domain, only that domain's targets: profession = nurse alone; religion = Muslim alone.
    # profession ICAT = 83.33 · 33.33/50 = 500/9; religion ICAT = 50 · min(100, 0)/50 = 0.
    assert res.ss["profession"].value == pytest.approx(100.0 / 3)
    assert res.lms["profession"].value == pytest.approx(250.0 / 3)
    assert res.icat["profession"].value == pytest.approx(500.0 / 9)
    assert res.ss["religion"].value == pytest.approx(100.0)
    assert res.lms["religion"].value == pytest.approx(50.0)
    assert res.icat["religion"].value == pytest.approx(0.0)
    assert res.ss.overall.n == 4


def test_per_target_breakdown(stereoset):
    items, scores = stereoset
    per = stereoset_per_target(items, scores)
    assert list(per) == ["nurse", "Muslim"]
    assert per["nurse"].pop("bias_type") == "profession"
    assert per["nurse"] == pytest.approx({"n": 3, "ss": 100 / 3, "lms": 250 / 3, "icat": 500 / 9})
    assert per["Muslim"].pop("bias_type") == "religion"
    assert per["Muslim"] == pytest.approx({"n": 1, "ss": 100.0, "lms": 50.0, "icat": 0.0})


def test_official_scores_group_targets_by_name_across_domains():
    # As StereoSet's evaluator: the overall groups by target string alone, so "x" in two domains is
    # one target there. Overall: x has 2 items, 1 stereotypical -> SS 50; y: 1 of 1 -> 100;
    # macro SS = 75 (were "x" split by domain: (100 + 0 + 100)/3 = 66.67).
    items, scores = build(("i1", "gender", "x", 1.0, 0.0, -1.0),
                          ("i2", "race", "x", 0.0, 1.0, -1.0),
                          ("i3", "race", "y", 1.0, 0.0, -1.0))
    res = stereoset_scores(items, scores, n_resamples=R)
    assert res.ss.overall.value == pytest.approx(75.0)
    assert res.ss["gender"].value == pytest.approx(100.0)
    assert res.ss["race"].value == pytest.approx(50.0)  # x: 0, y: 100


def test_micro_lms(stereoset):
    items, scores = stereoset
    lms = language_modeling_score(items, scores, n_resamples=R)
    # Related options 2 + 2 + 1 + 1 = 6 of 8 -> 75 (the macro LMS is 66.67);
    # profession 5 of 6 -> 83.33; religion 1 of 2 -> 50.
    assert lms.overall.value == pytest.approx(75.0)
    assert lms["profession"].value == pytest.approx(250.0 / 3)
    assert lms["religion"].value == pytest.approx(50.0)
    assert lms.overall.n == 4  # items are the resampled units


def test_paraphrase_score_flattens_pairs(stereoset):
    items, scores = stereoset
    ps = paraphrase_stereotype_score(items, scores, n_resamples=R)
    # a1: (1 > 0) yes, (0 = 0) tie no; b1: (-1 > -2) yes; a2, a3 have none.
    # 2 of 3 pairs -> 66.67 (n = 3); profession 1 of 2 -> 50 (n 2); religion 1 of 1 -> 100 (n 1).
    assert ps.overall.value == pytest.approx(200.0 / 3)
    assert ps.overall.n == 3
    assert (ps["profession"].value, ps["profession"].n) == (pytest.approx(50.0), 2)
    assert (ps["religion"].value, ps["religion"].n) == (pytest.approx(100.0), 1)


def test_crows_pairs_score():
    items = [
        BiasItem("c1", "crows_pairs", "race-color", "Black people", "more1", "less1"),
        BiasItem("c2", "crows_pairs", "race-color", "Black people", "more2", "less2"),
        BiasItem("c3", "crows_pairs", "gender", "women", "more3", "less3"),
    ]
    scores = {"more1": -10.0, "less1": -12.0,  # more preferred
              "more2": -5.0, "less2": -5.0,    # tie: not stereotypical
              "more3": -8.0, "less3": -7.0}    # less preferred
    # 1 of 3 -> 33.33; race-color 1 of 2 -> 50; gender 0 of 1 -> 0.
    res = crows_pairs_score(items, scores, n_resamples=R)
    assert res.overall.value == pytest.approx(100.0 / 3)
    assert res["race-color"].value == pytest.approx(50.0)
    assert res["gender"].value == pytest.approx(0.0)


@pytest.fixture
def retention():
    items = [RetentionItem("r1", "gender", "women", "r1 true", "r1 false"),
             RetentionItem("r2", "gender", "men", "r2 true", "r2 false"),
             RetentionItem("r3", "religion", "Muslims", "r3 true", "r3 false"),
             RetentionItem("r4", "race", "Japanese", "r4 true", "r4 false")]
    scores = {"r1 true": -1.0, "r1 false": -2.0,  # true preferred
              "r2 true": -3.0, "r2 false": -3.0,  # tie: not preferred
              "r3 true": -4.0, "r3 false": -2.0,  # false preferred
              "r4 true": 0.0, "r4 false": -1.0}   # true preferred
    return items, scores


def test_differentiation_score(retention):
    items, scores = retention
    ds = differentiation_score(items, scores, n_resamples=R)
    # r1, r4 of 4 -> 50; gender 1 of 2 -> 50; race 1 of 1 -> 100; religion 0 of 1 -> 0.
    assert ds.overall.value == pytest.approx(50.0)
    assert ds["gender"].value == pytest.approx(50.0)
    assert ds["race"].value == pytest.approx(100.0)
    assert ds["religion"].value == pytest.approx(0.0)


def test_retention_score_against_stored_reference(retention):
    items, scores = retention
    assert retention_predictions(items, scores) == {"r1": True, "r2": False, "r3": False,
                                                    "r4": True}
    reference = {"r1": True, "r2": True, "r3": False, "r4": False, "unused": True}
    rs = retention_score(items, scores, reference, n_resamples=R)
    # Same as reference: r1 (T=T), r3 (F=F); changed: r2, r4 -> 2 of 4 = 50.
    # gender r1 same, r2 changed -> 50; race r4 changed -> 0; religion r3 same -> 100.
    assert rs.overall.value == pytest.approx(50.0)
    assert rs["gender"].value == pytest.approx(50.0)
    assert rs["race"].value == pytest.approx(0.0)
    assert rs["religion"].value == pytest.approx(100.0)
    # Against its own predictions nothing changed: 100.
    own = retention_score(items, scores, retention_predictions(items, scores), n_resamples=R)
    assert own.overall.value == 100.0


def test_sentences_to_score_lists_each_needed_sentence_once(stereoset, retention):
    items, scores = stereoset
    ritems, rscores = retention
    dup = BiasItem("d", "user", "gender", "t", items[0].stereo, "new anti.")
    needed = sentences_to_score([*items, dup], ritems)
    assert len(needed) == len(set(needed))
    assert set(needed) == set(scores) | set(rscores) | {"new anti."}
    without = sentences_to_score(items, paraphrases=False)
    assert not any("para" in s for s in without)


# --- bootstrap ---------------------------------------------------------------------------------


def random_set(n=120, seed=1):
    rng = np.random.default_rng(seed)
    specs = [(f"i{k}", ["gender", "race"][k % 2], f"t{k % 7}", *rng.normal(size=3).tolist(),
              tuple(map(tuple, rng.normal(size=(k % 3, 2)).tolist())))
             for k in range(n)]
    return build(*specs)


def test_bootstrap_brackets_is_reproducible_and_counts_units():
    items, scores = random_set()
    n_pairs = sum(len(it.paraphrases) for it in items)
    for fn, n in [(stereotype_score, 120), (language_modeling_score, 120),
                  (paraphrase_stereotype_score, n_pairs)]:
        a = fn(items, scores, n_resamples=200, seed=3)
        assert a == fn(items, scores, n_resamples=200, seed=3)
        assert a != fn(items, scores, n_resamples=200, seed=4)
        assert a.overall.n == n
        assert a["gender"].n + a["race"].n == n
        for mv in (a.overall, *a.by_type.values()):
            assert mv.ci_low <= mv.value <= mv.ci_high
            assert mv.ci_low < mv.ci_high
    res = stereoset_scores(items, scores, n_resamples=200, seed=3)
    assert res == stereoset_scores(items, scores, n_resamples=200, seed=3)
    for bd in (res.ss, res.lms, res.icat):
        assert (bd.overall.n, bd["gender"].n, bd["race"].n) == (120, 60, 60)
        for mv in (bd.overall, *bd.by_type.values()):
            assert mv.ci_low <= mv.value <= mv.ci_high


def test_macro_bootstrap_resamples_items_within_targets():
    # With one target the per-target macro average is the micro one, on every resample: the two
    # bootstraps (same seed, same item draws) must agree exactly, CI included.
    items, scores = random_set()
    one = [BiasItem(it.id, it.source, it.bias_type, "same", it.stereo, it.anti, it.unrelated)
           for it in items]
    macro = stereoset_scores(one, scores, n_resamples=200)
    for got, want in [(macro.ss.overall, stereotype_score(one, scores, n_resamples=200).overall),
                      (macro.lms.overall,
                       language_modeling_score(one, scores, n_resamples=200).overall)]:
        assert got.n == want.n
        assert (got.value, got.ci_low, got.ci_high) == pytest.approx(
            (want.value, want.ci_low, want.ci_high), abs=1e-9)


def test_breakdown_serialises_to_json(stereoset):
    items, scores = stereoset
    bd = stereotype_score(items, scores, n_resamples=R)
    again = Breakdown.from_dict(json.loads(json.dumps(bd.to_dict())))
    assert again == bd
    assert json.loads(json.dumps(stereoset_scores(items, scores, n_resamples=R).to_dict()))


# --- errors ------------------------------------------------------------------------------------


def test_missing_sentence_score_is_named(stereoset, retention):
    items, scores = stereoset
    for drop in (items[1].anti, items[2].unrelated):
        partial = {k: v for k, v in scores.items() if k != drop}
        with pytest.raises(DataError, match=rf"no score for sentence '{drop}'"):
            stereoset_scores(items, partial)
    partial = {k: v for k, v in scores.items() if k != items[3].paraphrases[0].anti}
    with pytest.raises(DataError, match="item 'b1': no score"):
        paraphrase_stereotype_score(items, partial)
    ritems, rscores = retention
    with pytest.raises(DataError, match="item 'r3': no score for sentence 'r3 false'"):
        differentiation_score(ritems, {k: v for k, v in rscores.items() if k != "r3 false"})
    with pytest.raises(DataError, match="NaN"):
        stereotype_score(items, {**scores, items[0].stereo: math.nan})


@pytest.mark.parametrize("fn", [stereotype_score, crows_pairs_score, paraphrase_stereotype_score,
                                language_modeling_score, stereoset_scores, differentiation_score])
def test_empty_item_set(fn):
    with pytest.raises(DataError, match="empty set of items"):
        fn([], {})


def test_other_refusals(stereoset, retention):
    items, scores = stereoset
    ritems, rscores = retention
    with pytest.raises(DataError, match="empty set of items"):
        retention_score([], {}, {})
    with pytest.raises(DataError, match=r"no prediction for 2 of the 4 .*'r2', 'r4'"):
        retention_score(ritems, rscores, {"r1": True, "r3": False})
    with pytest.raises(DataError, match="none of the 2 items has paraphrases"):
        paraphrase_stereotype_score(items[1:3], scores)
    crows = BiasItem("c", "crows_pairs", "age", "old", "x", "y")
    with pytest.raises(DataError, match="item 'c' has no unrelated sentence"):
        language_modeling_score([crows], {"x": 0.0, "y": 1.0})
    with pytest.raises(DataError, match="'r1' appears more than once"):
        retention_predictions([ritems[0], ritems[0]], rscores)


# --- official StereoSet export -----------------------------------------------------------------


def test_export_round_trip(tmp_path, stereoset):
    items, scores = stereoset
    awkward = [-12.345678901234567, 1e-300, -0.0, 3.0, -7.1e12, 0.1 + 0.2, -1.0 / 3.0, 42.0,
               5e-324, -123456.78901234, 2.5, -9.99999999999999]
    scores = {text: awkward[k % len(awkward)] for k, text in enumerate(scores)}
    path = tmp_path / "out" / "predictions.json"
    export_predictions(items, scores, path)

    data = json.loads(path.read_text())
    assert list(data) == ["intrasentence"]
    ids = [row["id"] for row in data["intrasentence"]]
    expected = {it.stereo_id: it.stereo for it in items} | {it.anti_id: it.anti for it in items} \
        | {it.unrelated_id: it.unrelated for it in items}
    assert len(expected) == 12
    assert Counter(ids) == Counter(dict.fromkeys(expected, 1))  # every id of the items, each once
    for row in data["intrasentence"]:
        assert row["score"] == scores[expected[row["id"]]]
    assert read_predictions(path) == {i: scores[text] for i, text in expected.items()}
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temp file left


def test_export_refusals(tmp_path, stereoset):
    items, scores = stereoset
    path = tmp_path / "p.json"
    no_ids = BiasItem("x", "user", "gender", "t", "s.", "a.", "u.")
    with pytest.raises(DataError, match="item 'x' has no stereo sentence id"):
        export_predictions([no_ids], {"s.": 0.0, "a.": 0.0, "u.": 0.0}, path)
    with pytest.raises(DataError, match="empty set"):
        export_predictions([], scores, path)
    with pytest.raises(DataError, match=r"no score for sentence 'a2 unrelated\.'"):
        export_predictions(items, {k: v for k, v in scores.items() if k != "a2 unrelated."}, path)
    with pytest.raises(DataError, match="appears twice"):
        export_predictions([items[0], items[0]], scores, path)
    with pytest.raises(DataError, match="JSON cannot hold"):
        export_predictions(items, {**scores, items[0].anti: math.inf}, path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not a JSON file"),
     ('{"other": []}', "expected an object with an 'intrasentence' list"),
     ('{"intrasentence": {}}', "'intrasentence' is not a list"),
     ('{"intrasentence": [{"id": 1, "score": 0}]}', r"intrasentence\[0\]: expected"),
     ('{"intrasentence": [{"id": "a", "score": "x"}]}', r"'score' is not a number"),
     ('{"intrasentence": [{"id": "a", "score": 1}, {"id": "a", "score": 2}]}', "appears twice")],
)
def test_read_predictions_refuses_malformed_files(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_predictions(path)
    with pytest.raises(DataError, match="no such file"):
        read_predictions(tmp_path / "missing.json")


def test_stereotype_flags_through_pair_gaps_equal_the_direct_comparison():
    """SS and PS count gap = score(stereo) − score(anti) > 0 (`scoring.pairs`): the same flags as
    comparing the two scores, ties, infinities and neighbouring floats included."""
    from fairstamp.metrics.bias import stereotype_flags

    rng = np.random.default_rng(0)
    values = [*np.round(rng.normal(size=60), 1), 0.0, -0.0, np.inf, -np.inf, -np.inf, 1e-320,
              np.nextafter(-4.0, 0.0), -4.0]
    specs = [(f"i{k}", "gender", f"t{k % 5}", float(values[k]), float(values[-1 - k]), 0.0,
              ((float(values[(k + 1) % len(values)]), float(values[(k + 2) % len(values)])),))
             for k in range(len(values))]
    items, scores = build(*specs)
    expected = np.array([scores[it.stereo] > scores[it.anti] for it in items], dtype=bool)
    with np.errstate(invalid="ignore"):
        flags = stereotype_flags(items, scores)
        ps = paraphrase_stereotype_score(items, scores, n_resamples=R)
    assert flags.dtype == bool and np.array_equal(flags, expected)
    pairs = [scores[p.stereo] > scores[p.anti] for it in items for p in it.paraphrases]
    assert ps.overall.value == 100.0 * np.mean(pairs)
