"""INLP, SentenceDebias and Self-Debias: the projections remove what they claim, the edits
restore the model bitwise, and the Self-Debias wrapper computes the paper's formula at the right
positions of a padded batch."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.errors import FairstampError
from fairstamp.methods import EditContext, get_method
from fairstamp.methods.projection import (
    bias_subspace,
    classifier_accuracy,
    counterfactual_groups,
    fit_linear_classifier,
    inlp,
    inlp_dataset,
    orthonormal_rows,
    project_out,
    projection_matrix,
    sentence_representations,
)
from fairstamp.methods.self_debias import DEBIASING_PREFIXES, SelfDebiasingLM
from fairstamp.models.archspec import get_module
from fairstamp.scoring import Scorer
from fairstamp.scoring.scorer import pad_batch
from fairstamp.utils.hooks import hooks
from test_fast import tiny

TEXTS = ["The nurse said that she was tired.", "He is a doctor.",
         "My grandmother baked bread for the whole family every Sunday morning."]


def context(loaded, seed=0, bias_types=("gender",)):
    return EditContext(loaded=loaded, items=[], bias_types=list(bias_types), layer=1,
                       data_root=SHARED_DATA, seed=seed, progress=False)


def batch_logits(loaded, texts=TEXTS):
    scorer = Scorer.from_loaded(loaded)
    ids, mask, positions = pad_batch([scorer.encode(t) for t in texts], scorer.pad_token_id)
    with torch.no_grad():
        out = loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=False).logits
    return out, mask.bool()


def unembed_inputs(loaded, texts=TEXTS):
    """What the unembedding receives (after any projection hook), at real tokens: [n, d]."""
    seen = []
    with hooks(loaded.model, pre=[(loaded.arch.unembed, lambda m, a, k: seen.append(a[0]))]):
        _, mask = batch_logits(loaded, texts)
    return seen[0][mask].double()


def planted(n=600, dim=16, seed=0):
    """Three classes whose means differ along two fixed directions, plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    basis = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))[0].T
    means = torch.tensor([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]], dtype=torch.float64)
    x = means[y] @ basis + torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, y, basis


# -- INLP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["svm", "logistic"])
def test_inlp_removes_a_planted_signal_down_to_chance(kind):
    x, y, basis = planted()
    train, dev = slice(0, 420), slice(420, None)
    before = classifier_accuracy(fit_linear_classifier(x[train], y[train], 3, kind=kind),
                                 x[dev], y[dev])
    result = inlp(x[train], y[train], x[dev], y[dev], 3, n_iterations=2, kind=kind)
    v = result.directions
    p = projection_matrix(v)
    assert before > 0.9
    assert torch.allclose(p @ p, p, atol=1e-10) and torch.allclose(p, p.T)
    assert torch.allclose(v @ v.T, torch.eye(v.shape[0], dtype=v.dtype), atol=1e-10)
    # Every classifier sees nothing of the projected data, and the planted plane is gone.
    assert (x @ p @ result.classifiers.T).abs().max() < 1e-8 * x.abs().max()
    assert (basis @ p).norm() / basis.norm() < 0.2
    # A fresh classifier on the projected data is at chance (majority = 1/3 here).
    after = classifier_accuracy(fit_linear_classifier(x[train] @ p, y[train], 3, kind=kind),
                                x[dev] @ p, y[dev])
    assert after < 0.45
    # Autoregressive training: each classifier lies in the nullspace of the earlier ones.
    w = result.classifiers
    assert (w[3:] @ w[:3].T).abs().max() < 1e-6 * w.norm() ** 2
    assert [h["iteration"] for h in result.history] == [1, 2]


def test_inlp_stops_below_min_accuracy_and_on_a_full_space():
    x, y, _ = planted(dim=4)
    result = inlp(x[:420], y[:420], x[420:], y[420:], 3, n_iterations=5, min_accuracy=0.8)
    assert result.stopped == "min_accuracy" and result.history[-1]["dev_accuracy"] < 0.8
    assert result.directions.shape[0] == 3  # only the first (accurate) classifier is kept
    full = inlp(x[:420], y[:420], x[420:], y[420:], 3, n_iterations=5)
    assert full.stopped == "full_rank" and full.directions.shape[0] == 4


def test_orthonormal_rows_keeps_a_small_classifier_and_drops_zeros():
    rows = torch.tensor([[1e-6, 0, 0], [0, 5.0, 0], [0, 10.0, 0], [0, 0, 0]], dtype=torch.float64)
    v = orthonormal_rows(rows)
    assert v.shape == (2, 3)
    assert torch.allclose(project_out(torch.eye(3, dtype=torch.float64), v),
                          torch.diag(torch.tensor([0, 0, 1.0], dtype=torch.float64)))


def test_inlp_dataset_classes_and_clipping():
    tuples = [["he", "she"], ["his", "her"], ["man", "woman"]]
    sentences = ["Yesterday he went to the old market alone.", "She sold her car to a dealer.",
                 "The man and the woman left.", "Nothing here mentions anyone at all today.",
                 "The Heath was green and wide and long."]
    texts, labels, names = inlp_dataset(sentences, tuples, 10, random.Random(0))
    assert names == ["male", "female", "neutral"]
    by_label = {label: text for text, label in zip(texts, labels)}
    assert sorted(labels) == [0, 1, 2]  # the mixed sentence is skipped, one neutral kept
    assert by_label[0].startswith("Yesterday he") and by_label[1].startswith("She sold her")
    assert "Heath" in by_label[2] or "Nothing" in by_label[2]
    race = inlp_dataset(["The Asian market opened early today.", "A quiet day in the town."],
                        [["black", "white", "asian"]], 10, random.Random(0))
    assert race[2] == ["bias", "neutral"] and race[1] == [0, 1]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_inlp_edit_projects_every_position_and_restores_bitwise(tiny_tokenizer, arch):
    loaded = tiny(tiny_tokenizer, arch)
    before, mask = batch_logits(loaded)
    edit = get_method("inlp", n_iterations=3, max_sentences=40).fit(context(loaded))
    v = edit.directions.double()
    h = unembed_inputs(loaded)
    w = edit.tensors()["classifiers"].double()
    assert v.shape[0] == edit.info["directions"] == edit.parameters_changed() // v.shape[1] >= 3
    assert (h @ v.T).abs().max() < 1e-4 * h.abs().max()
    assert (h @ w.T).abs().max() < 1e-4 * h.abs().max() * w.abs().max()
    p = edit.projection()
    assert torch.allclose(p @ p, p, atol=1e-5) and torch.equal(p, p.T)
    assert not torch.allclose(batch_logits(loaded)[0][mask], before[mask], atol=1e-3)
    history = edit.info["bias_types"]["gender"]["history"]
    assert len(history) == 3 and edit.info["bias_types"]["gender"]["classes"]["male"] == 40
    edit.restore(loaded)
    assert torch.equal(batch_logits(loaded)[0], before)
    assert not get_module(loaded.model, loaded.arch.unembed)._forward_pre_hooks


def test_same_seed_same_projection(tiny_tokenizer, tmp_path):
    loaded = tiny(tiny_tokenizer, "llama")
    runs = []
    for seed in (0, 0, 1):
        edit = get_method("inlp", n_iterations=2, max_sentences=30).fit(context(loaded, seed))
        edit.restore(loaded)
        runs.append(edit.directions)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    edit.save(tmp_path)
    assert (tmp_path / "edit.safetensors").is_file() and (tmp_path / "edit.json").is_file()


def test_bias_types_without_attribute_words_are_refused(tiny_tokenizer):
    loaded = tiny(tiny_tokenizer, "llama")
    with pytest.raises(FairstampError, match="attribute words"):
        get_method("sentence_debias").fit(context(loaded, bias_types=["profession"]))


def test_representations_are_the_padded_batch_mean_of_the_unembedding_input(tiny_tokenizer):
    loaded = tiny(tiny_tokenizer, "gpt2")
    reps = sentence_representations(loaded, TEXTS, batch_size=2)
    scorer = Scorer.from_loaded(loaded)
    for text, rep in zip(TEXTS, reps):
        ids = scorer.encode(text)
        seen: list[torch.Tensor] = []
        capture = (loaded.arch.unembed, lambda m, a, k, s=seen: s.append(a[0]))
        with hooks(loaded.model, pre=[capture]):
            loaded.model(input_ids=torch.tensor([ids]))
        assert torch.allclose(rep, seen[0][0, 1:].double().mean(0), atol=1e-5)  # BOS not pooled


# -- SentenceDebias --------------------------------------------------------------------------------


def test_counterfactual_groups_swap_each_word_keeping_case():
    tuples = [["he", "she"], ["his", "her"], ["black", "white", "asian"]]
    groups = counterfactual_groups(["He lost his Black hat.", "Nothing to see."], tuples, 10,
                                   random.Random(0))
    assert groups == [["He lost his Black hat.", "She lost his Black hat."],
                      ["He lost his Black hat.", "He lost her Black hat."],
                      ["He lost his Black hat.", "He lost his White hat.",
                       "He lost his Asian hat."]]


def test_bias_subspace_finds_the_counterfactual_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(24, generator=g, dtype=torch.float64),
                                              dim=0)
    base = torch.randn(200, 24, generator=g, dtype=torch.float64) * 3 + 10
    groups = torch.stack([base + direction, base - direction], dim=1)
    groups += 0.05 * torch.randn(groups.shape, generator=g, dtype=torch.float64)
    v, ratios = bias_subspace(groups, 2)
    assert v.shape == (2, 24)
    assert abs(float(v[0] @ direction)) > 0.95 and ratios[0] > 0.5 > ratios[1]


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_sentence_debias_edit(tiny_tokenizer, arch):
    loaded = tiny(tiny_tokenizer, arch)
    before, _ = batch_logits(loaded)
    edit = get_method("sentence_debias", n_components=2, max_sentences=30).fit(
        context(loaded, bias_types=["gender", "religion"]))
    v = edit.directions.double()
    assert v.shape[0] == 4 and torch.allclose(v @ v.T, torch.eye(4, dtype=v.dtype), atol=1e-5)
    assert edit.info["bias_types"]["religion"]["group_size"] == 3
    h = unembed_inputs(loaded)
    assert (h @ v.T).abs().max() < 1e-4 * h.abs().max()
    edit.restore(loaded)
    assert torch.equal(batch_logits(loaded)[0], before)
    assert not get_module(loaded.model, loaded.arch.unembed)._forward_pre_hooks
    again = get_method("sentence_debias", n_components=2, max_sentences=30).fit(
        context(loaded, bias_types=["gender", "religion"]))
    assert torch.equal(again.directions, edit.directions)
    again.restore(loaded)


# -- Self-Debias -----------------------------------------------------------------------------------


def reference_self_debias(loaded, text, prefix, decay, epsilon):
    """The formula computed one sentence at a time, without padding: (log p, log p̃) [T, V]."""
    scorer = Scorer.from_loaded(loaded)
    ids = scorer.encode(text)
    head = loaded.tokenizer(prefix, add_special_tokens=False).input_ids
    with torch.no_grad():
        plain = loaded.model(input_ids=torch.tensor([ids])).logits[0].double()
        prefixed = loaded.model(input_ids=torch.tensor([ids[:1] + head + ids[1:]])).logits[0]
    logp = plain.log_softmax(-1)
    biased = prefixed[len(head):].double().softmax(-1)
    alpha = torch.clamp(torch.exp(-decay * torch.clamp(biased - logp.exp(), min=0)), min=epsilon)
    debiased = (logp.exp() * alpha)
    return logp, (debiased / debiased.sum(-1, keepdim=True)).log(), biased


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_self_debias_matches_the_formula_on_a_padded_batch(tiny_tokenizer, arch):
    loaded = tiny(tiny_tokenizer, arch)
    edit = get_method("self_debias", decay_constant=500.0).fit(context(loaded))
    assert isinstance(loaded.model, SelfDebiasingLM)
    out, mask = batch_logits(loaded)
    prefix = DEBIASING_PREFIXES["gender"]
    worst = []
    for row, text in enumerate(TEXTS):
        logp, expected, biased = reference_self_debias(replace(loaded, model=edit.original),
                                                       text, prefix, 500.0, 0.01)
        n = int(mask[row].sum())
        got = out[row, :n].double().log_softmax(-1)
        assert torch.allclose(got, expected, atol=2e-4)
        # The token the prefix raises most is pushed down by exactly max(exp(-λΔ), ε)
        # relative to the tokens the prefix does not raise.
        gain = biased - logp.exp()
        pos, tok = divmod(int(gain.argmax()), gain.shape[1])
        safe = int((gain[pos] <= 0).nonzero()[0])
        ratio = (got[pos, tok] - logp[pos, tok]) - (got[pos, safe] - logp[pos, safe])
        factor = max(float(torch.exp(-500.0 * gain[pos, tok])), 0.01)
        assert float(gain[pos, tok]) > 0 and float(ratio) == pytest.approx(np.log(factor),
                                                                          abs=1e-3)
        worst.append(float(ratio))
    assert min(worst) < -0.05


def test_self_debias_with_zero_decay_is_the_base_model(tiny_tokenizer):
    loaded = tiny(tiny_tokenizer, "llama")
    before, mask = batch_logits(loaded)
    edit = get_method("self_debias", decay_constant=0.0).fit(
        context(loaded, bias_types=["gender", "race"]))
    assert len(edit.info["prefixes"]) == 2
    out, _ = batch_logits(loaded)
    assert torch.allclose(out[mask], before[mask].log_softmax(-1), atol=1e-5)
    ids = torch.tensor([Scorer.from_loaded(loaded).encode("The doctor said")])
    greedy = edit.original.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.model.generate(input_ids=ids, max_new_tokens=5), greedy)


def test_self_debias_wrapper_passes_through_and_restores(tiny_tokenizer):
    loaded = tiny(tiny_tokenizer, "gpt2")
    scorer = Scorer.from_loaded(loaded)
    before = scorer.score(TEXTS).total
    original = loaded.model
    edit = get_method("self_debias").fit(context(loaded))
    wrapper = loaded.model
    assert [id(p) for p in wrapper.parameters()] == [id(p) for p in original.parameters()]
    assert [n for n, _ in wrapper.named_parameters()] == [n for n, _ in original.named_parameters()]
    assert wrapper.config is original.config
    assert get_module(wrapper, loaded.arch.unembed) is get_module(original, loaded.arch.unembed)
    assert edit.parameters_changed() == 0
    debiased = Scorer.from_loaded(loaded).score(TEXTS).total
    assert np.abs(debiased - before).max() > 1e-3
    with pytest.raises(FairstampError, match="right-padded"):
        wrapper(input_ids=torch.tensor([[0, 1, 5]]), attention_mask=torch.tensor([[0, 1, 1]]))
    edit.restore(loaded)
    assert loaded.model is original
    assert np.array_equal(Scorer.from_loaded(loaded).score(TEXTS).total, before)


def test_self_debias_needs_a_prefix_for_each_bias_type(tiny_tokenizer):
    loaded = tiny(tiny_tokenizer, "llama")
    with pytest.raises(FairstampError, match="no Self-Debias prefix"):
        get_method("self_debias").fit(context(loaded, bias_types=["left-handedness"]))
    edit = get_method("self_debias", prefixes="Offensive text: ").fit(
        context(loaded, bias_types=["left-handedness"]))
    assert edit.info["prefixes"] == ["Offensive text: "]
    edit.restore(loaded)


def test_self_debias_generates_through_the_one_generation_path(tiny_tokenizer):
    """BOLD and `fairstamp generate` decode with `generate_batch`; under Self-Debias the wrapper
    gets unpadded batches of one prompt length, and its text is the wrapper's own decoding."""
    from fairstamp.stamp.generation import generate_batch

    loaded = tiny(tiny_tokenizer, "llama")
    prompts = ["The nurse said that", "He", "The doctor said", "The chess player was"]
    plain = generate_batch(loaded, prompts, max_new_tokens=5)
    edit = get_method("self_debias", decay_constant=500.0).fit(context(loaded))
    batched = generate_batch(loaded, prompts, max_new_tokens=5, batch_size=4)
    alone = [generate_batch(loaded, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == alone and all(batched)
    scorer = Scorer.from_loaded(loaded)
    for prompt, text in zip(prompts, batched):  # each the wrapper's own greedy decoding
        ids = torch.tensor([scorer.encode(prompt)])
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == text
    sampled = generate_batch(loaded, prompts, max_new_tokens=5, sample=True, seed=2)
    assert sampled == generate_batch(loaded, prompts, max_new_tokens=5, sample=True, seed=2)
    edit.restore(loaded)
    assert generate_batch(loaded, prompts, max_new_tokens=5) == plain
