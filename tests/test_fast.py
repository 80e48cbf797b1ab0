"""Stamp training and the FAST pipeline: reproducibility, the NaN guard, reuse of the frozen lower
layers, sequential editing, and the `debias` / `eval --stamp` / `generate` commands."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from conftest import ARCHS, SHARED_DATA, build_tiny_model
from fairstamp.cli.main import main
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.training_text import framed_pairs, neutral_sentences
from fairstamp.data.wikitext import generic_passages, generic_sentences
from fairstamp.errors import DataError, FairstampError
from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.models.archspec import arch_spec_for
from fairstamp.models.loader import LoadedModel
from fairstamp.scoring import Scorer
from fairstamp.scoring.pairs import batch_lean, bias_loss
from fairstamp.stamp import WEIGHTS_NAME, disabled, stamps_of
from fairstamp.training.loop import TrainingDiverged
from test_stamp import logits

GENERIC = SHARED_DATA / "wikitext2" / "pytorch_examples" / "valid.txt"


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=12)


def tiny(tokenizer, arch: str = "llama") -> LoadedModel:
    model = build_tiny_model(arch)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch_spec_for(model),
                       name=f"tiny-{arch}", source="local", path="-")


def fit(tokenizer, items, arch="llama", monitor=(), **overrides):
    loaded = tiny(tokenizer, arch)
    config = FitConfig(**{"width": 16, "max_steps": 6, "check_every": 3, "batch_pairs": 8,
                          "batch_kl": 4, "framings": 1, "lr": 1e-2, "min_steps": 100,
                          **overrides})
    result = fit_stamp(loaded, items, 1, retention_sentences=["Christians celebrate Easter."],
                       generic_sentences=generic_sentences(GENERIC, 6), config=config,
                       monitor=monitor, progress=False)
    return loaded, result


def item_gaps(loaded, items) -> np.ndarray:
    scores = Scorer.from_loaded(loaded).score([s for i in items for s in (i.stereo, i.anti)]).mean
    return scores[0::2] - scores[1::2]


def mean_abs_gap(loaded, items) -> float:
    return float(np.mean(np.abs(item_gaps(loaded, items))))


def test_same_seed_gives_identical_stamp_bytes(tiny_tokenizer, items, tmp_path):
    blobs = []
    for run, seed in enumerate((0, 0, 1)):
        _, result = fit(tiny_tokenizer, items, seed=seed)
        result.stamp.save_pretrained(tmp_path / str(run))
        blobs.append((tmp_path / str(run) / WEIGHTS_NAME).read_bytes())
    assert blobs[0] == blobs[1]
    assert blobs[0] != blobs[2]


def test_training_shrinks_the_gap_and_records_history(tiny_tokenizer, items):
    loaded = tiny(tiny_tokenizer)
    before = mean_abs_gap(loaded, items)
    loaded, result = fit(tiny_tokenizer, items, max_steps=30, check_every=0, keep_best=False)
    after = mean_abs_gap(loaded, items)
    assert after < 0.5 * before
    assert [h["step"] for h in result.history] == [5, 10, 15, 20, 25, 30]  # automatic: small edit
    assert result.history[-1]["bias_loss_all"] == pytest.approx(after, abs=1e-5)
    assert result.stopped == "max_steps"
    assert result.stamp.config.training["steps"] == 30


def test_tokens_trained_count_every_sentence_of_each_step_and_checks_are_timed(tiny_tokenizer,
                                                                            items):
    # 12 items, no framings: a batch of 12 pairs is every pair each step, and one KL batch is
    # every short sentence (the retention sentence, the targets' neutral sentences, the generic
    # ones); no passages, no L_c.
    loaded, result = fit(tiny_tokenizer, items, max_steps=3, batch_pairs=12, batch_kl=1000,
                         framings=0, counterfactual_weight=0)
    scorer = Scorer.from_loaded(loaded)
    pairs = sum(len(scorer.encode(s)) for i in items for s in (i.stereo, i.anti))
    kl = sum(len(scorer.encode(t)) for t in ["Christians celebrate Easter.",
                                             *neutral_sentences(i.target for i in items),
                                             *generic_sentences(GENERIC, 6)])
    assert result.tokens == 3 * (pairs + kl)
    assert result.summary()["tokens"] == result.tokens
    assert 0 < result.check_seconds < result.seconds  # one SS check, at step 3


def test_each_check_is_a_log_line_when_no_progress_bar_is_drawn(tiny_tokenizer, items, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="fairstamp.training.loop"):
        fit(tiny_tokenizer, items)  # progress=False
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 3/6", "step 6/6"]
    assert "SS " in lines[0] and "generic KL" in lines[0]


def test_the_best_check_is_kept(tiny_tokenizer, items):
    loaded, result = fit(tiny_tokenizer, items, max_steps=12, check_every=2, lr=0.2)
    kept = result.summary()["final"]
    assert kept["step"] == result.best_step
    best = min(result.history,
               key=lambda h: (max(abs(h["ss"] - 50) - 1.0, 0.0), h["bias_loss_all"]))
    assert best["step"] == result.best_step
    assert mean_abs_gap(loaded, items) == pytest.approx(kept["bias_loss_all"], abs=1e-5)


def test_a_validation_slice_of_targets_chooses_the_kept_check(tiny_tokenizer):
    from fairstamp.training.loop import validation_split

    items = load_stereoset(bias_types=["gender"], limit=40)
    trained, validation = validation_split(items, 0.3)
    assert trained and validation
    assert not {i.target for i in trained} & {i.target for i in validation}
    loaded, result = fit(tiny_tokenizer, items, max_steps=12, check_every=2, lr=0.2,
                         validation_fraction=0.3)
    assert result.validation_items == len(validation)
    assert result.summary()["validation_targets"] == sorted({i.target for i in validation})
    best = min(result.history, key=lambda h: (max(abs(h["validation_ss"] - 50) - 1.0, 0.0),
                                              h["validation_bias_loss"]))
    assert best["step"] == result.best_step
    kept = result.summary()["final"]
    assert mean_abs_gap(loaded, validation) == pytest.approx(kept["validation_bias_loss"],
                                                             abs=1e-5)
    assert mean_abs_gap(loaded, trained) == pytest.approx(kept["bias_loss_all"], abs=1e-5)
    # The set-aside items are never trained on: the stamp is the one the other items alone give.
    stamps = [fit(tiny_tokenizer, chosen, max_steps=6, keep_best=False, **extra)[1].stamp
              for chosen, extra in ((items, {"validation_fraction": 0.3}), (trained, {}))]
    for a, b in zip(*(s.module.state_dict().values() for s in stamps)):
        assert torch.equal(a, b)
    with pytest.raises(FairstampError, match="validation_fraction"):
        FitConfig(validation_fraction=1.0)


def test_monitored_items_are_scored_at_every_check_and_change_nothing(tiny_tokenizer):
    from fairstamp.training.loop import validation_split

    trained, watched = validation_split(load_stereoset(bias_types=["gender"], limit=40), 0.3)
    settings = {"max_steps": 12, "check_every": 2, "lr": 0.2}
    _, plain = fit(tiny_tokenizer, trained, **settings)
    loaded, result = fit(tiny_tokenizer, trained, monitor=watched, **settings)
    # The same training, checks and kept step, bit for bit: the monitor is only recorded.
    assert [(h["step"], h["ss"], h["bias_loss_all"]) for h in result.history] == [
        (h["step"], h["ss"], h["bias_loss_all"]) for h in plain.history]
    assert result.best_step == plain.best_step
    for a, b in zip(result.stamp.module.state_dict().values(),
                    plain.stamp.module.state_dict().values()):
        assert torch.equal(a, b)
    checks = result.summary()["checks"]
    assert [c["step"] for c in checks] == [2, 4, 6, 8, 10, 12]
    assert all(set(c) == {"step", "ss", "bias_loss_all", "monitor_ss", "monitor_bias_loss",
                          "monitor_gap"} for c in checks)
    assert len({c["monitor_bias_loss"] for c in checks}) > 1  # it moves with training
    kept = next(c for c in checks if c["step"] == result.best_step)
    watched_gaps = item_gaps(loaded, watched)
    assert np.mean(np.abs(watched_gaps)) == pytest.approx(kept["monitor_bias_loss"], abs=1e-5)
    assert np.mean(watched_gaps) == pytest.approx(kept["monitor_gap"], abs=1e-5)
    assert "monitor_ss" not in plain.summary()["checks"][0]


def test_l_m_keeps_the_pairs_mean_score(tiny_tokenizer, items):
    """keep_mean_weight > 0 adds L_m: the gap between stereo and anti shrinks while the mean score
    of each pair stays nearer the original model's."""
    sentences = [s for i in items for s in (i.stereo, i.anti)]
    original = Scorer.from_loaded(tiny(tiny_tokenizer)).score(sentences).mean
    drift = {}
    for gamma, smooth in ((0.0, 0.0), (10.0, 0.0), (10.0, 1e-3)):
        loaded, result = fit(tiny_tokenizer, items, keep_mean_weight=gamma, lm_smooth=smooth,
                             max_steps=12, lr=3e-2)
        assert ("keep_mean" in result.history[-1]) == bool(gamma)
        scores = Scorer.from_loaded(loaded).score(sentences).mean
        drift[gamma, smooth] = float(np.mean(np.abs((scores[0::2] + scores[1::2])
                                                    - (original[0::2] + original[1::2])))) / 2
    assert drift[10.0, 0.0] < drift[0.0, 0.0] and drift[10.0, 1e-3] < drift[0.0, 0.0]
    with pytest.raises(FairstampError, match="lm_smooth"):
        FitConfig(lm_smooth=-1.0)


def test_early_stopping_when_ss_is_balanced_and_le_is_flat(tiny_tokenizer, items):
    _, result = fit(tiny_tokenizer, items, max_steps=200, check_every=5, min_steps=5,
                    ss_tolerance=50.0, flat_tolerance=1.0)
    assert result.stopped == "converged" and result.steps == 10


def test_reusing_the_lower_layers_gives_the_same_stamp(tiny_tokenizer, items):
    _, cached = fit(tiny_tokenizer, items, reuse_lower=True)
    _, full = fit(tiny_tokenizer, items, reuse_lower=False)
    a, b = cached.stamp.state_dict(), full.stamp.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not torch.equal(a["down.weight"], torch.zeros_like(a["down.weight"]))


def test_invalid_settings_attach_nothing(tiny_tokenizer, items):
    loaded = tiny(tiny_tokenizer)
    with pytest.raises(FairstampError, match="learning rate"):
        fit_stamp(loaded, items, 1, config=FitConfig(lr=-1.0), progress=False)
    assert stamps_of(loaded.model, loaded.arch) == []
    with pytest.raises(FairstampError, match="lr_final"):
        FitConfig(lr_final=0.0)
    with pytest.raises(FairstampError, match="keep_mean_weight"):
        FitConfig(keep_mean_weight=-1.0)
    with pytest.raises(FairstampError, match="check_every"):
        FitConfig(check_every=-1)


def test_automatic_check_interval_is_5_for_small_edits_and_grows_with_the_items():
    config = FitConfig()
    assert [config.check_interval(n) for n in (1, 227, 400, 401, 1160)] == [5, 5, 5, 11, 29]
    assert FitConfig(check_every=3).check_interval(1160) == 3


def test_automatic_step_limit_is_the_cross_validated_60_for_small_edits(tiny_tokenizer, items):
    from fairstamp.methods.finetune import FineTuneConfig

    config = FitConfig()
    assert config.max_steps == 0
    assert [config.step_limit(n) for n in (1, 227, 400, 401, 1160)] == [60, 60, 60, 200, 200]
    assert FitConfig(max_steps=7).step_limit(1160) == 7
    assert FineTuneConfig().step_limit(10) == 200  # the FT-L baseline keeps its own length
    with pytest.raises(FairstampError, match="max_steps"):
        FitConfig(max_steps=-1)
    # The loop runs the automatic length (no early stop: min_steps above it) and records it.
    _, result = fit(tiny_tokenizer, items[:4], max_steps=0, check_every=30)
    assert (result.steps, result.summary()["step_limit"]) == (60, 60)
    assert [h["step"] for h in result.history] == [30, 60]


def test_nan_loss_stops_training_and_keeps_nothing(tiny_tokenizer, items):
    loaded = tiny(tiny_tokenizer)
    before = logits(loaded.model)
    with pytest.raises(TrainingDiverged, match="No stamp was kept"):
        fit_stamp(loaded, items, 1, generic_sentences=generic_sentences(GENERIC, 4),
                  config=FitConfig(width=8, lr=1e30, max_steps=5, batch_pairs=4,
                                   batch_kl=2), progress=False)
    assert stamps_of(loaded.model, loaded.arch) == []
    assert torch.equal(logits(loaded.model), before)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_sequential_editing_stacks_a_second_stamp(tiny_tokenizer, items):
    loaded, first = fit(tiny_tokenizer, items[:6])
    after_first = logits(loaded.model)
    second = fit_stamp(loaded, items[6:], 1, generic_sentences=generic_sentences(GENERIC, 4),
                       config=FitConfig(width=8, max_steps=4, batch_pairs=4, batch_kl=2,
                                        lr=1e-2), progress=False)
    assert [s for _, s in stamps_of(loaded.model, loaded.arch)] == [first.stamp.module,
                                                                    second.stamp.module]
    assert not torch.allclose(logits(loaded.model), after_first)
    with disabled(loaded.model, loaded.arch, [second.stamp.module]):
        assert torch.equal(logits(loaded.model), after_first)


def test_training_data_helpers(items):
    pairs = framed_pairs(items[:2], 2)
    assert len(pairs) == 6 and pairs[0] == (items[0].stereo, items[0].anti, items[0].id)
    assert pairs[2][0].endswith(items[0].stereo) and pairs[2][0] != items[0].stereo
    neutral = neutral_sentences(["mother", "mother", "Ethiopian"])
    assert len(neutral) == 12 and "mother" in neutral[0]
    generic = generic_sentences(GENERIC, 20, seed=3)
    assert generic == generic_sentences(GENERIC, 20, seed=3) != generic_sentences(GENERIC, 20)
    assert all("<unk>" not in s and " , " not in s for s in generic)
    passages = generic_passages(GENERIC, 10, words=120, seed=3)
    assert passages == generic_passages(GENERIC, 10, words=120, seed=3)
    assert passages != generic_passages(GENERIC, 10, words=120)
    assert len(set(passages)) == 10
    assert all(len(p.split()) >= 120 and "<unk>" not in p for p in passages)
    with pytest.raises(DataError, match="passages"):
        generic_passages(GENERIC, 10**6)


def test_long_generic_texts_are_trained_on_in_their_own_batches(tiny_tokenizer, items):
    """L_s2 over generic sentences and passages (batched apart from the short sentences): both KL
    terms are computed, passages are drawn, and the run is reproducible."""
    passages = generic_passages(GENERIC, 3, words=60)
    config = FitConfig(width=16, max_steps=4, check_every=2, batch_pairs=4, batch_kl=2,
                       batch_passages=1, framings=0, lr=1e-2, min_steps=100)
    runs = []
    for _ in range(2):
        loaded = tiny(tiny_tokenizer)
        result = fit_stamp(loaded, items[:4], 1, retention_sentences=["Christians celebrate "
                           "Easter.", "Nurses care for patients."],
                           generic_sentences=["The river flows north."],
                           generic_passages=passages,
                           config=config, progress=False)
        runs.append(result)
    assert all(h["retention_kl"] > 0 and h["generic_kl"] > 0 for h in runs[0].history)
    assert runs[0].history == [{**h, "seconds": runs[0].history[i]["seconds"]}
                               for i, h in enumerate(runs[1].history)]


def test_kl_targets_and_edited_ss_do_not_depend_on_how_passes_are_grouped(tiny_tokenizer, items):
    """Training passes group sentences by length (less padding); the KL targets must still line
    up with each sentence's own positions, and SS must pair each stereo with its anti."""
    from fairstamp.scoring.scorer import LowerLayerCache
    from fairstamp.scoring.upper import UpperForward
    from fairstamp.training.loop import _check_gaps, _kl_targets, _Sentences, _ss_and_loss

    loaded = tiny(tiny_tokenizer)
    scorer = Scorer.from_loaded(loaded)
    upper = UpperForward(loaded.model, loaded.arch, 1)
    texts = [*generic_sentences(GENERIC, 5), *generic_passages(GENERIC, 2, words=40)]
    sents = _Sentences([scorer.encode(t) for t in texts])
    grouped = _kl_targets(upper, sents, 8, scorer.pad_token_id, "cpu", budget=256)
    for i, ids in enumerate(sents.ids):
        alone = _kl_targets(upper, _Sentences([ids]), 8, scorer.pad_token_id, "cpu",
                            budget=10**6)
        at = slice(grouped["offsets"][i], grouped["offsets"][i] + len(ids) - 1)
        assert torch.equal(grouped["idx"][at], alone["idx"])
        torch.testing.assert_close(grouped["lp"][at], alone["lp"], rtol=0, atol=1e-5)
    pairs = [scorer.encode(s) for i in items for s in (i.stereo, i.anti)]
    gaps = mean_abs_gap(loaded, items)
    ss = 100 * np.mean([a > b for a, b in zip(*(np.asarray(
        Scorer.from_loaded(loaded).score([getattr(i, side) for i in items]).mean)
        for side in ("stereo", "anti")))])
    cached = Scorer.from_loaded(loaded, progress=False,
                                lower_cache=LowerLayerCache(loaded.model, loaded.arch, 1))
    for checker in (Scorer.from_loaded(loaded, max_batch_tokens=160, progress=False),
                    Scorer.from_loaded(loaded, max_batch_tokens=10**6, progress=False),
                    cached, cached):  # the cached scorer records, then replays
        got_ss, got_gap = _ss_and_loss(_check_gaps(checker, pairs))
        assert got_ss == pytest.approx(ss) and got_gap == pytest.approx(gaps, abs=1e-5)
    assert cached.lower_cache.replayed > 0 and cached.lower_cache.recomputed == 0


def run_cli(args) -> int:
    return main([str(a) for a in args])


def test_debias_eval_and_generate_commands_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--data-dir", SHARED_DATA]
    assert run_cli(["debias", *common, "--bias-types", "gender", "--limit", "30",
                    "--trace-items", "2", "--suite", "biascope", "--max-steps", "3",
                    "--check-every", "2", "--width", "8", "--bootstrap", "10", "--train-vocab",
                    "seen", "--counterfactual-types", "gender", "--out", out]) == 0
    for name in ("stamp_config.json", "stamp.safetensors", "edited_items.json", "trace.json",
                 "metrics.json", "report.md", "before/metrics.json", "after/predictions.json",
                 "plots/edited_ss.png", "plots/training.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    edited = json.loads((out / "edited_items.json").read_text())
    assert metrics["n_edited"] == len(edited) > 0
    assert metrics["after"]["metrics"]["edited"]["n_items"] == len(edited)
    assert "rs" in metrics["after"]["metrics"]["retention"]
    assert metrics["layer_source"] == "rule two-thirds" and metrics["layer"] == 2
    assert (metrics["sign_weight"], metrics["sign_weight_source"]) == (0.0, "default")
    assert metrics["config"]["fit"]["train_vocab"] == "seen"
    assert 0 < metrics["fit"]["vocab_size"] <= 300
    assert "3 of at most 3 training steps" in (out / "report.md").read_text()
    assert "SS checked every 2 steps" in (out / "report.md").read_text()
    assert metrics["config"]["fit"]["counterfactual_types"] == ["gender"]
    assert "counterfactual_types=gender, " in (out / "report.md").read_text()
    assert "SS on the edited items" in capsys.readouterr().out
    assert run_cli(["debias", *common, "--train-vocab", "some", "--out", tmp_path / "x"]) == 2
    assert "train_vocab must be one of auto, full, seen" in capsys.readouterr().err
    assert run_cli(["debias", *common, "--counterfactual-types", "age", "--out",
                    tmp_path / "x"]) == 2
    assert "gender, race, religion, not age" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    assert run_cli(["debias", *common, "--limit", "30", "--out", out]) == 2  # exists

    evaluated = tmp_path / "eval"
    assert run_cli(["eval", *common, "--stamp", out, "--suite", "biascope", "--bias-types",
                    "gender", "--limit", "30", "--bootstrap", "10", "--reference",
                    out / "before", "--out", evaluated]) == 0
    after = json.loads((out / "after" / "metrics.json").read_text())["metrics"]
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["config"]["stamp"] == str(out)
    assert again["metrics"]["edited"]["ss"]["overall"] == after["edited"]["ss"]["overall"]
    assert again["metrics"]["retention"]["rs"]["overall"] == after["retention"]["rs"]["overall"]

    assert run_cli(["generate", "--model", tiny_model_dir, "--stamp", out, "--max-new-tokens",
                    "3", "The mother"]) == 0
    assert "stamped (layer" in capsys.readouterr().out


def test_a_stamp_is_refused_on_another_model(tiny_model_dir, tmp_path, tiny_tokenizer, capsys):
    other = tmp_path / "other"
    build_tiny_model("llama", seed=5).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    loaded = tiny(tiny_tokenizer)
    from fairstamp.stamp import new_stamp

    new_stamp(loaded, 0, width=4).save_pretrained(tmp_path / "stamp")
    code = run_cli(["generate", "--model", other, "--stamp", tmp_path / "stamp", "Hello"])
    assert code == 2
    assert "different weights" in capsys.readouterr().err


def test_crows_editing_needs_the_opt_in(tiny_model_dir, tmp_path, capsys):
    code = run_cli(["debias", "--model", tiny_model_dir, "--data", "crows", "--layer", "0",
                    "--out", tmp_path / "x"])
    assert code == 2
    assert "--allow-crows-training" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_debias_on_smollm2_moves_the_edited_items_toward_50(tmp_path):
    out = tmp_path / "run"
    assert run_cli(["debias", "--model", "smollm2-135m", "--data-dir", SHARED_DATA,
                    "--bias-types", "gender", "--limit", "40", "--layer", "20",
                    "--suite", "biascope", "--max-steps", "40", "--bootstrap", "50",
                    "--out", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before = metrics["before"]["metrics"]["edited"]["ss"]["overall"]["value"]
    after = metrics["after"]["metrics"]["edited"]["ss"]["overall"]["value"]
    rs = metrics["after"]["metrics"]["retention"]["rs"]["overall"]["value"]
    assert abs(after - 50) < abs(before - 50)
    assert rs >= 95


def test_layer_rules():
    from fairstamp.runs.config import EditRunConfig, choose_layer

    class Trace:
        def decisive_layer(self, component, exclude_first=False):
            return 7 if exclude_first else 0

    def pick(rule, n, layer=None):
        return choose_layer(EditRunConfig(model="m", layer_rule=rule, layer=layer), n, "m",
                            Trace())

    assert [pick("two-thirds", n)[0] for n in (30, 18, 3, 1)] == [20, 12, 2, 0]
    assert pick("argmax", 30) == (0, "rule argmax")
    assert pick("argmax-after-first", 30) == (7, "rule argmax-after-first")
    assert pick("argmax", 30, layer=29) == (29, "given")
    with pytest.raises(FairstampError, match=r"layer 30 is out of range: m has 30 layers \(0-29\)"):
        pick("two-thirds", 30, layer=30)
    with pytest.raises(FairstampError, match="needs the bias trace"):
        choose_layer(EditRunConfig(model="m", layer_rule="argmax"), 30, "m")
    with pytest.raises(FairstampError, match="unknown layer rule"):
        EditRunConfig(model="m", layer_rule="middle")


def test_measured_recipe_is_the_default_for_its_model_only(tiny_tokenizer, items):
    """gemma-3-270m's cross-validated layer and λ (fast/recipes.py) where nothing is given;
    every other model, and every given option, as before."""
    from fairstamp.fast.train import for_model
    from fairstamp.runs.config import EditRunConfig, choose_layer

    def pick(name, n=18, **given):
        return choose_layer(EditRunConfig(model=name, **given), n, name)

    assert pick("gemma-3-270m") == (9, "measured for gemma-3-270m")
    assert pick("google/gemma-3-270m") == (9, "measured for google/gemma-3-270m")
    assert pick("/models/gemma-3-270m") == (12, "rule two-thirds")  # a local copy: the rule
    assert pick("m", 30) == (20, "rule two-thirds")
    assert pick("gemma-3-270m", layer_rule="two-thirds") == (12, "rule two-thirds")
    assert pick("gemma-3-270m", layer=4) == (4, "given")
    with pytest.raises(FairstampError, match="layer 9 is out of range"):
        pick("gemma-3-270m", 6)
    assert for_model(FitConfig(), "gemma-3-270m").sign_weight == 1.0
    assert for_model(FitConfig(sign_weight=0.0), "gemma-3-270m").sign_weight == 0.0
    assert for_model(FitConfig(), "m").sign_weight == 0.0
    assert for_model(FitConfig(sign_weight=2.0), "m").sign_weight == 2.0

    # fit_stamp trains with the model's λ and records it with the stamp.
    loaded = tiny(tiny_tokenizer)
    loaded.name = "gemma-3-270m"
    result = fit_stamp(loaded, items, 1, generic_sentences=generic_sentences(GENERIC, 4),
                       config=FitConfig(width=8, max_steps=2, batch_pairs=8, batch_kl=4,
                                        framings=1, check_every=2),
                       progress=False)
    assert "batch_lean" in result.history[-1]
    assert result.stamp.config.training["sign_weight"] == 1.0


def test_an_edit_of_several_bias_types_leans_and_leaves_l_c_off(tiny_tokenizer):
    """The measured recipe of an edit of several bias types (λ = 1, δ = 0) unless an option says
    otherwise; one bias type keeps the general defaults (λ = 0, the loop's automatic δ)."""
    from fairstamp.fast.recipes import counterfactual_weight_for, sign_weight_for
    from fairstamp.fast.train import for_model

    both = ["gender", "race", "gender"]
    several = "measured for several bias types"
    assert sign_weight_for(None, "m", both) == (1.0, several)
    assert sign_weight_for(None, "m", ["race", "race"]) == (0.0, "default")
    assert sign_weight_for(None, "gemma-3-270m", both) == (1.0, "measured for gemma-3-270m")
    assert sign_weight_for(0.5, "m", both) == (0.5, "given")
    assert counterfactual_weight_for(None, both) == (0.0, several)
    assert counterfactual_weight_for(None, ["race"]) == (None, "default")
    assert counterfactual_weight_for(2.0, both) == (2.0, "given")
    config = for_model(FitConfig(), "m", both)
    assert (config.sign_weight, config.counterfactual_weight) == (1.0, 0.0)
    config = for_model(FitConfig(), "m", ["race"])
    assert (config.sign_weight, config.counterfactual_weight) == (0.0, None)
    config = for_model(FitConfig(sign_weight=0.0, counterfactual_weight=3.0), "m", both)
    assert (config.sign_weight, config.counterfactual_weight) == (0.0, 3.0)
    # Another L_c option asks for L_c: its δ stays the loop's automatic one.
    for asked in ({"counterfactual_types": ("gender",)}, {"counterfactual_templates": True},
                  {"counterfactual_substitutes": 2}, {"counterfactual_target": "mixture"},
                  {"counterfactual_span": "sentence"}):
        assert FitConfig(**asked).counterfactual_asked, asked
        assert for_model(FitConfig(**asked), "m", both).counterfactual_weight is None, asked
    assert not FitConfig().counterfactual_asked

    # fit_stamp trains a two-type edit that way and records it with the stamp.
    mixed = [*load_stereoset(bias_types=["gender"], limit=8),
             *load_stereoset(bias_types=["religion"], limit=4)]
    _, result = fit(tiny_tokenizer, mixed)
    assert result.counterfactual_weight == 0.0
    assert "batch_lean" in result.history[-1]
    training = result.stamp.config.training
    assert (training["sign_weight"], training["counterfactual_weight"]) == (1.0, 0.0)
    _, gender_only = fit(tiny_tokenizer, mixed[:8])
    assert gender_only.stamp.config.training["sign_weight"] == 0.0
    assert "batch_lean" not in gender_only.history[-1]


def test_cosine_learning_rate_runs_from_lr_to_lr_final():
    from fairstamp.training.loop import _cosine

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-2)
    schedule = _cosine(optimizer, 5, 0.1)
    used = []
    for _ in range(5):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert used[0] == 1e-2 and used[-1] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(used))


def test_a_stamp_input_the_architecture_lacks_is_refused_before_training(tiny_tokenizer, items):
    loaded = tiny(tiny_tokenizer, "gemma3_text")
    with pytest.raises(FairstampError, match="reading the MLP's input"):
        fit_stamp(loaded, items, 1, config=FitConfig(reads="mlp_input"), progress=False)
    assert not stamps_of(loaded.model, loaded.arch)


def test_balanced_draws_split_each_step_evenly_across_bias_types():
    from fairstamp.training.loop import _Balanced, _Cycler

    groups = [list(range(0, 10)), list(range(10, 13)), list(range(13, 43))]
    draws = _Balanced(groups, torch.Generator().manual_seed(0))
    counts = np.zeros(3, dtype=int)
    for _ in range(30):
        batch = draws.take(8)
        per = [sum(k in g for k in batch) for g in groups]
        assert len(batch) == 8 and sorted(per) == [2, 3, 3]  # 8 over 3 types: 3, 3, 2
        counts += per
    assert counts.tolist() == [80, 80, 80]  # the odd share goes round
    # Every group cycles through all of its indices before repeating one.
    fresh = _Balanced(groups, torch.Generator().manual_seed(0))
    drawn = list(itertools.chain.from_iterable(fresh.take(3) for _ in range(3)))
    assert sorted(k for k in drawn if 10 <= k < 13) == [10, 11, 12]
    assert len({k for k in drawn if k < 10}) == 3  # no repeat within an epoch
    # One group draws what the plain cycler draws.
    one = _Balanced([list(range(20))], torch.Generator().manual_seed(1))
    plain = _Cycler(20, torch.Generator().manual_seed(1))
    assert [one.take(7) for _ in range(5)] == [plain.take(7) for _ in range(5)]


def test_balanced_training_runs_and_is_reproducible(tiny_tokenizer):
    mixed = [*load_stereoset(bias_types=["gender"], limit=8),
             *load_stereoset(bias_types=["religion"], limit=4)]
    stamps = [fit(tiny_tokenizer, mixed, balance_types=True)[1].stamp.module for _ in range(2)]
    plain = fit(tiny_tokenizer, mixed)[1].stamp.module
    assert torch.equal(stamps[0].down.weight, stamps[1].down.weight)
    assert not torch.equal(stamps[0].down.weight, plain.down.weight)


@pytest.mark.parametrize("arch", ARCHS)
def test_restricted_logits_are_the_full_logits_of_those_tokens(tiny_tokenizer, arch):
    """`UpperForward.restricted` computes the logits of a vocabulary subset only (the same values
    as the full logits' columns) and puts the model's own unembedding back, even on error."""
    from fairstamp.models.archspec import get_module
    from fairstamp.scoring.upper import Batch, UpperForward, Vocabulary

    loaded = tiny(tiny_tokenizer, arch)
    upper = UpperForward(loaded.model, loaded.arch, 0)
    unembed = get_module(loaded.model, loaded.arch.unembed)
    scorer = Scorer.from_loaded(loaded)
    batch = Batch.of([scorer.encode("The nurse said she was tired."),
                      scorer.encode("Hello there.")], scorer.pad_token_id)
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 1])
    full = upper.logits(batch, None, rows, cols)
    vocab = Vocabulary.of([7, 3, 200, 3, 41], upper.vocab_size())
    assert vocab.ids.tolist() == [3, 7, 41, 200] and vocab.index[41] == 2 and vocab.index[8] == -1
    with upper.restricted(vocab):
        sub = upper.logits(batch, None, rows, cols)
        with pytest.raises(RuntimeError, match="already restricted"), upper.restricted(vocab):
            pass
    torch.testing.assert_close(sub, full[:, vocab.ids], rtol=0, atol=1e-6)
    assert get_module(loaded.model, loaded.arch.unembed) is unembed and upper.vocab is None
    with pytest.raises(KeyError), upper.restricted(vocab):
        raise KeyError("a failing step")
    assert get_module(loaded.model, loaded.arch.unembed) is unembed
    with pytest.raises(ValueError, match="token ids"):
        Vocabulary.of([upper.vocab_size()], upper.vocab_size())


def test_training_on_the_seen_vocabulary(tiny_tokenizer, items):
    """train_vocab="seen": with a top-k that covers the whole vocabulary it is the full loss (the
    same stamp); with a small top-k it trains over a strict subset, reproducibly, and still
    closes the gaps, and the model's own unembedding is back afterwards."""
    from fairstamp.models.archspec import get_module

    vocab_size = get_module(tiny(tiny_tokenizer).model, "lm_head").weight.shape[0]
    _, full = fit(tiny_tokenizer, items, kl_top_k=vocab_size)
    _, covered = fit(tiny_tokenizer, items, kl_top_k=vocab_size, train_vocab="seen")
    assert covered.vocab_size == full.vocab_size == vocab_size
    a, b = full.stamp.state_dict(), covered.stamp.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    before = mean_abs_gap(tiny(tiny_tokenizer), items)
    runs = []
    for _ in range(2):
        loaded, result = fit(tiny_tokenizer, items, kl_top_k=4, train_vocab="seen",
                             max_steps=30, check_every=10, keep_best=False)
        runs.append(result)
        assert isinstance(get_module(loaded.model, "lm_head"), torch.nn.Linear)
    assert 0 < runs[0].vocab_size < vocab_size
    assert runs[0].summary()["vocab_size"] == runs[0].vocab_size
    assert mean_abs_gap(loaded, items) < 0.5 * before
    assert runs[0].history == [{**h, "seconds": runs[0].history[i]["seconds"]}
                               for i, h in enumerate(runs[1].history)]
    with pytest.raises(FairstampError, match="train_vocab"):
        FitConfig(train_vocab="some")


def test_auto_training_vocabulary_follows_the_vocabulary_size(tiny_tokenizer, items, monkeypatch):
    import fairstamp.training.loop as train

    _, small = fit(tiny_tokenizer, items, kl_top_k=4, max_steps=2)  # auto; 300 tokens
    assert small.vocab_size == 300
    monkeypatch.setattr(train, "SEEN_VOCAB_ABOVE", 299)
    _, large = fit(tiny_tokenizer, items, kl_top_k=4, max_steps=2)
    _, seen = fit(tiny_tokenizer, items, kl_top_k=4, max_steps=2, train_vocab="seen")
    assert large.vocab_size == seen.vocab_size < 300


def test_the_batch_lean_term_stops_pulling_anti_leaning_pairs_toward_the_stereotype():
    """λ·|mean gap| beside the mean |gap|: while the pairs lean stereotypical as a group, an
    anti-leaning pair gets no gradient (its two terms cancel) and the stereotypical ones twice
    theirs; the lean is 0 when the gaps cancel, however large each is."""
    gaps = torch.tensor([0.5, 0.3, -0.2], requires_grad=True)
    (bias_loss(gaps) + batch_lean(gaps)).backward()
    assert torch.allclose(gaps.grad, torch.tensor([2 / 3, 2 / 3, 0.0]))
    assert float(batch_lean(torch.tensor([0.4, -0.4]))) == 0.0
    # By group (bias type), weighted by each group's pairs: one type's lean does not cancel
    # another's, and one group is the plain lean.
    leans = np.array([0.4, 0.4, -0.2, -0.2])
    assert batch_lean(leans, ["race", "race", "gender", "gender"]) == pytest.approx(0.3)
    assert batch_lean(leans) == pytest.approx(0.1)
    assert batch_lean(leans, ["race"] * 4) == batch_lean(leans)


def test_sign_weight_is_trained_and_reported(tiny_tokenizer, items):
    _, plain = fit(tiny_tokenizer, items, max_steps=4, lr=3e-2)
    _, leaned = fit(tiny_tokenizer, items, max_steps=4, lr=3e-2, sign_weight=5.0)
    assert "batch_lean" not in plain.history[-1] and "batch_lean" in leaned.history[-1]
    assert leaned.history[0]["loss"] > plain.history[0]["loss"]  # the same first batch, λ·lean
    with pytest.raises(FairstampError, match="sign_weight"):
        FitConfig(sign_weight=-1.0)
