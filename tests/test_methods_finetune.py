"""The fine-tuning baselines: FT-L (FAST's loss on one MLP output weight, L∞-constrained) and CDA
(counterfactual augmentation + LoRA causal-LM fine-tuning, merged)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED_DATA
from fairstamp.data.locations import WIKITEXT2_VALID
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.wikitext import generic_sentences
from fairstamp.errors import FairstampError
from fairstamp.methods import EditContext, WeightEdit, get_method
from fairstamp.methods.cda import (
    AttributeSwap,
    LoRA,
    adapters_on,
    augment,
    corpus_sentences,
    lm_loss,
    target_paths,
)
from fairstamp.models.archspec import get_module
from fairstamp.scoring import Scorer
from fairstamp.training.loop import TrainingDiverged
from test_fast import mean_abs_gap, tiny
from test_stamp import logits

GENERIC = SHARED_DATA / WIKITEXT2_VALID
FT_QUICK = dict(max_steps=12, check_every=4, batch_pairs=8, batch_kl=4, framings=1, lr=1e-2,
                min_steps=100)
CDA_QUICK = dict(max_sentences=40, steps=8, batch_size=8, max_tokens=32, lr=1e-2, rank=4)


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=12)


def context(loaded, items, seed=0, **kw) -> EditContext:
    return EditContext(loaded=loaded, items=items, bias_types=["gender"], layer=1,
                       retention_sentences=["Christians celebrate Easter."],
                       generic_sentences=generic_sentences(GENERIC, 6), data_root=SHARED_DATA,
                       seed=seed, progress=False, **kw)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- FT-L --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ft_changes_only_the_projection_within_the_bound_and_restores(tiny_tokenizer, items,
                                                                      arch):
    loaded = tiny(tiny_tokenizer, arch)
    before, weights, gap = logits(loaded.model), state(loaded.model), mean_abs_gap(loaded, items)
    eps = 1e-2
    edit = get_method("ft", norm_constraint=eps, **{**FT_QUICK, "lr": 3e-3, "max_steps": 16,
                                                    "keep_best": False}).fit(context(loaded, items))
    name = loaded.arch.mlp_out_proj_path(1) + ".weight"
    assert isinstance(edit, WeightEdit) and list(edit.originals) == [name]
    after = loaded.model.state_dict()
    changed = [k for k in weights if not torch.equal(after[k], weights[k])]
    assert changed == [name]
    delta = (after[name] - weights[name]).abs()
    assert delta.max() <= eps + 1e-7  # the constraint holds ...
    assert delta.max() >= 0.99 * eps  # ... and binds (the run pushed against it)
    assert edit.parameters_changed() == int((delta > 0).sum()) > 0
    assert mean_abs_gap(loaded, items) < 0.8 * gap
    assert edit.info["steps"] == 16 and edit.info["parameter"] == name
    assert [h["step"] for h in edit.info["history"]] == [4, 8, 12, 16]
    assert not any(p.requires_grad for p in loaded.model.parameters())
    edit.restore(loaded)
    assert torch.equal(logits(loaded.model), before)


def test_ft_same_seed_same_weights(tiny_tokenizer, items):
    runs = []
    for seed in (0, 0, 1):
        loaded = tiny(tiny_tokenizer)
        edit = get_method("ft", norm_constraint=0.0, **{**FT_QUICK, "max_steps": 6}).fit(
            context(loaded, items, seed=seed))
        runs.append(edit.deltas()[loaded.arch.mlp_out_proj_path(1) + ".weight"])
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert runs[0].abs().max() > 1e-2  # unconstrained: beyond the bound of the test above


def test_ft_divergence_restores_the_weight(tiny_tokenizer, items):
    loaded = tiny(tiny_tokenizer, "gpt2")  # (Llama's RMSNorms keep even 1e37 weights finite)
    before = logits(loaded.model)
    with pytest.raises(TrainingDiverged, match="No weight change was kept"):
        get_method("ft", norm_constraint=0.0, **{**FT_QUICK, "lr": 1e34}).fit(
            context(loaded, items))
    assert torch.equal(logits(loaded.model), before)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    with pytest.raises(FairstampError, match="learning rate"):
        get_method("ft", lr=-1.0).fit(context(loaded, items))


# -- CDA: augmentation -------------------------------------------------------------------------

WORDS = {"gender": [["he", "she"], ["him", "her"], ["his", "her"], ["man", "woman"],
                    ["men", "women"], ["mr.", "mrs."], ["son", "daughter"]],
         "religion": [["jewish", "christian", "muslim"], ["rabbi", "priest", "imam"]]}


def test_gender_swaps_both_ways_whole_words_and_keeps_case():
    swap = AttributeSwap({"gender": WORDS["gender"]})
    rng = random.Random(0)
    cases = {
        "He said his son met the women.": "She said her daughter met the men.",
        "She gave her daughter to the MEN; Mr. Smith saw him.":
            "He gave his son to the WOMEN; Mrs. Smith saw her.",
        "The man's son-in-law, a woman-hater, hesitated.":
            "The woman's daughter-in-law, a man-hater, hesitated.",
        "Hermes, the heir, shed the manuscript.": None,  # no whole attribute word
    }
    for sentence, expected in cases.items():
        assert swap.counterfactual(sentence, rng) == expected
    # "her" is listed twice: the last tuple wins, as bias-bench's loop
    assert swap.counterfactual("her", rng) == "his"


def test_triples_pick_one_target_per_position_and_sentence():
    swap = AttributeSwap({"religion": WORDS["religion"]})
    seen = set()
    for seed in range(40):
        out = swap.counterfactual("The Jewish rabbi met a muslim imam.", random.Random(seed))
        seen.add(out)
    # Jewish/rabbi (position 0) move together to position 1 or 2; muslim/imam (2) to 0 or 1.
    assert seen == {f"The {a} {b} met a {c} {d}." for a, b in (("Christian", "priest"),
                                                                ("Muslim", "imam"))
                    for c, d in (("jewish", "rabbi"), ("christian", "priest"))}
    assert swap.counterfactual("The Jewish rabbi met a muslim imam.", random.Random(3)) == \
        swap.counterfactual("The Jewish rabbi met a muslim imam.", random.Random(3))


def test_augmentation_keeps_each_source_and_its_counterfactual():
    swap = AttributeSwap.from_file(SHARED_DATA / "bias_bench" / "bias_attribute_words.json",
                                   ["gender"])
    sentences = corpus_sentences(GENERIC)
    text, counts = augment(sentences, swap, max_sentences=30, plain_sentences=5, seed=1)
    assert counts["augmented_sources"] == 30 and counts["plain"] == 5 and len(text) == 65
    assert counts["with_attribute_words"] > 300
    for original, counterfactual in zip(text[0:60:2], text[1:60:2]):
        assert original in sentences and original != counterfactual
        assert swap.has_attribute(original) and swap.has_attribute(counterfactual)
    assert not any(swap.has_attribute(s) for s in text[60:])
    assert augment(sentences, swap, max_sentences=30, seed=1)[0] == text[:60]


# -- CDA: LoRA and the method ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_lora_equals_the_adapter_and_restore_is_exact(tiny_tokenizer, arch):
    loaded = tiny(tiny_tokenizer, arch)
    before = logits(loaded.model)
    g = torch.Generator().manual_seed(0)
    adapters = {p: LoRA(get_module(loaded.model, p), 4, 8.0, g)
                for p in target_paths(loaded, ["mlp_out"])}
    for lora in adapters.values():
        with torch.no_grad():
            lora.B.normal_(0, 0.05, generator=g)
    with adapters_on(loaded.model, adapters):
        unmerged = logits(loaded.model)
    assert torch.equal(logits(loaded.model), before)  # hooks gone
    assert (unmerged - before).abs().max() > 1e-3
    params = dict(loaded.model.named_parameters())
    for path, lora in adapters.items():
        lora.merge_into(params[path + ".weight"])
    assert torch.allclose(logits(loaded.model), unmerged, atol=1e-5)


def test_cda_lowers_the_lm_loss_merges_and_restores(tiny_tokenizer, items, tmp_path):
    loaded = tiny(tiny_tokenizer, "gpt2")
    before, weights = logits(loaded.model), state(loaded.model)
    swap = AttributeSwap.from_file(SHARED_DATA / "bias_bench" / "bias_attribute_words.json",
                                   ["gender"])
    text, _ = augment(corpus_sentences(GENERIC), swap, max_sentences=40, seed=0)
    scorer = Scorer.from_loaded(loaded)
    seqs = [scorer.encode(t)[:32] for t in text]
    with torch.no_grad():
        loss_before = float(lm_loss(loaded, scorer, seqs))
    edit = get_method("cda", **CDA_QUICK).fit(context(loaded, items))
    with torch.no_grad():
        loss_after = float(lm_loss(loaded, scorer, seqs))
    assert loss_after < loss_before - 0.05  # (a random tiny model is near-uniform: 5.70)
    assert edit.info["training_sentences"] == 80 and len(edit.info["losses"]) == 8
    changed = {k for k in weights if not torch.equal(loaded.model.state_dict()[k], weights[k])}
    assert changed == {loaded.arch.mlp_out_proj_path(i) + ".weight" for i in range(3)}
    assert set(edit.originals) == changed
    again = tiny(tiny_tokenizer, "gpt2")
    get_method("cda", **CDA_QUICK).fit(context(again, items))
    assert torch.equal(logits(again.model), logits(loaded.model))  # same seed, same weights
    saved = edit.tensors()  # the factors: B·A is each merged delta
    for path in target_paths(loaded, ["mlp_out"]):
        delta = edit.deltas()[path + ".weight"]
        factor = saved[f"lora.{path}.B"] @ saved[f"lora.{path}.A"]
        assert torch.allclose(factor.T, delta, atol=1e-6)  # GPT-2's Conv1D: [in, out]
    edit.save(tmp_path)
    assert set(load_file(tmp_path / "edit.safetensors")) == set(saved)
    edit.restore(loaded)
    assert torch.equal(logits(loaded.model), before)
    assert not np.isnan(edit.info["loss_last"])
