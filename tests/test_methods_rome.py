"""ROME and MEMIT as bias baselines: the key statistics (value, cache), the rank-one update's
algebra, and the edits themselves (gap shrinks, only the named weights change, exact restore,
reproducible)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import SHARED_DATA
from fairstamp.data.stereoset import load_stereoset
from fairstamp.errors import FairstampError
from fairstamp.methods import EditContext, get_method
from fairstamp.methods.covariance import (
    mlp_key_second_moments,
    stats_folder,
    text_chunks,
)
from fairstamp.methods.memit import edit_layers
from fairstamp.methods.rome import (
    RomeConfig,
    build_requests,
    collect_at_subjects,
    optimise_target,
    rank_one_update,
    subject_token,
)
from fairstamp.models.archspec import get_module
from fairstamp.scoring import Scorer
from fairstamp.scoring.upper import UpperForward
from fairstamp.utils.hooks import hidden_arg, hooks
from test_fast import mean_abs_gap, tiny
from test_stamp import logits

WIKI = SHARED_DATA / "wikitext2" / "pytorch_examples" / "valid.txt"
# Tiny models' MLP outputs are small, so ROME's decay ‖δ‖/‖v‖² would pin δ at zero: turned off.
FAST_ROME = dict(v_num_grad_steps=8, framings=1, n_tokens=2000, max_items=3, v_weight_decay=0.0)
FAST_MEMIT = dict(v_num_grad_steps=8, framings=1, n_tokens=2000, layers="1,2", v_weight_decay=0.0)


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=12)


def context(loaded, items, tmp_path, layer=2, **kw) -> EditContext:
    return EditContext(loaded=loaded, items=list(items), bias_types=["gender"], layer=layer,
                       data_root=SHARED_DATA, cache_dir=tmp_path, seed=0, progress=False, **kw)


def raw_keys(loaded, layer: int, chunks) -> torch.Tensor:
    """Every input of layer `layer`'s MLP output projection, one chunk at a time (no padding)."""
    got = []

    def grab(module, args, kwargs):
        x = hidden_arg(args, kwargs)
        got.append(x.reshape(-1, x.shape[-1]).double())

    with torch.no_grad(), hooks(loaded.model, pre=[(loaded.arch.mlp_out_proj_path(layer), grab)]):
        for chunk in chunks:
            loaded.model(input_ids=torch.tensor([chunk]), use_cache=False)
    return torch.cat(got)


def sharp_llama(tokenizer):
    """A tiny Llama with a larger init (std 0.2): its predictions depend on context enough for
    an edit at one position to move later tokens (at std 0.02 they barely do)."""
    from transformers import AutoModelForCausalLM

    from conftest import tiny_configs
    from fairstamp.models.archspec import arch_spec_for
    from fairstamp.models.loader import LoadedModel

    config = tiny_configs(300)["llama"]
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch_spec_for(model),
                       name="sharp-llama", source="local", path="-")


# -- key statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_second_moment_is_psd_and_equals_a_direct_computation(tiny_tokenizer, tmp_path, arch):
    loaded = tiny(tiny_tokenizer, arch)
    moments = mlp_key_second_moments(loaded, [2, 0], n_tokens=700, data_root=SHARED_DATA,
                                     cache_dir=tmp_path)
    chunks = text_chunks(tiny_tokenizer, WIKI, 700, prefix_id=tiny_tokenizer.bos_token_id)
    assert sum(len(c) for c in chunks) == 700 and len(chunks[-1]) < 128  # a padded last chunk
    for layer in (0, 2):
        c = moments[layer].double()
        keys = raw_keys(loaded, layer, chunks)
        assert keys.shape[0] == 700
        direct = keys.T @ keys / keys.shape[0]
        assert torch.allclose(c, direct, rtol=1e-5, atol=1e-7 * direct.abs().max())
        assert torch.equal(c, c.T)
        assert torch.linalg.eigvalsh(c).min() > -1e-6 * c.diagonal().max()
    assert not torch.allclose(moments[0], moments[2])


def test_cached_statistics_are_reused_without_running_the_model(tiny_tokenizer, tmp_path):
    loaded = tiny(tiny_tokenizer, "llama")
    calls = []
    handle = loaded.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        first = mlp_key_second_moments(loaded, [1], n_tokens=500, data_root=SHARED_DATA,
                                       cache_dir=tmp_path)
        n_first = len(calls)
        both = mlp_key_second_moments(loaded, [1, 2], n_tokens=500, data_root=SHARED_DATA,
                                      cache_dir=tmp_path)  # only layer 2 is measured
        n_second = len(calls) - n_first
        again = mlp_key_second_moments(loaded, [2, 1], n_tokens=500, data_root=SHARED_DATA,
                                       cache_dir=tmp_path)
    finally:
        handle.remove()
    assert n_first > 0 and n_second == n_first and len(calls) == n_first + n_second
    assert torch.equal(first[1], both[1]) and torch.equal(both[2], again[2])
    path = stats_folder(loaded.model, tmp_path) / "mlp_keys_layer2_500.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fairstamp"])
    assert meta["n_tokens"] == 500 and len(meta["text_sha256"]) == 64
    other = tmp_path / "other"
    mlp_key_second_moments(loaded, [2], n_tokens=500, data_root=SHARED_DATA, cache_dir=other)
    twin = stats_folder(loaded.model, other) / path.name
    assert twin.read_bytes() == path.read_bytes()  # same weights and text: the same bytes


def test_too_little_text_is_a_clear_error(tiny_tokenizer, tmp_path):
    (tmp_path / "wikitext2" / "pytorch_examples").mkdir(parents=True)
    (tmp_path / "wikitext2" / "pytorch_examples" / "valid.txt").write_text(" A short text .\n")
    with pytest.raises(FairstampError, match="500 requested"):
        mlp_key_second_moments(tiny(tiny_tokenizer), [1], n_tokens=500, data_root=tmp_path,
                               cache_dir=tmp_path)


# -- subjects and the rank-one update ------------------------------------------------------------


def test_subject_is_the_targets_last_token(tiny_tokenizer, items):
    scorer = Scorer(tiny(tiny_tokenizer).model, tiny_tokenizer)
    text = "My neighbour said: the SCHOOLGIRL is walking."
    ids = scorer.encode(text)
    at = subject_token(tiny_tokenizer, text, "schoolgirl", ids, 1)
    assert tiny_tokenizer.decode(ids[1 : at + 1]).endswith("SCHOOLGIRL")
    assert not tiny_tokenizer.decode(ids[1:at]).endswith("SCHOOLGIRL")
    assert subject_token(tiny_tokenizer, text, "mother", ids, 1) is None
    requests = build_requests(tiny(tiny_tokenizer), items[:4], framings=2)
    assert [len(r.seqs) for r in requests] == [7] * 4  # 3 pairs + the essence prompt
    for request, item in zip(requests, items[:4]):
        essence = tiny_tokenizer.decode(request.seqs[-1][1 : request.subject[-1] + 1])
        assert essence.strip().lower() == item.target.lower()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rank_one_update_maps_the_key_and_spares_usual_keys(tiny_tokenizer, tmp_path, items,
                                                            arch):
    loaded = tiny(tiny_tokenizer, arch)
    c = mlp_key_second_moments(loaded, [1], n_tokens=3000, data_root=SHARED_DATA,
                               cache_dir=tmp_path)[1]
    keys, _ = collect_at_subjects(loaded, build_requests(loaded, items[:1], 1), key_layers=[1])
    key = keys[1][0]
    proj = get_module(loaded.model, loaded.arch.mlp_out_proj_path(1))
    before = proj(key.unsqueeze(0))[0].detach()
    value = before + torch.randn(before.shape, generator=torch.Generator().manual_seed(0))
    update = rank_one_update(proj, key, value, c)
    assert torch.linalg.matrix_rank(update).item() == 1
    assert torch.allclose(proj(key.unsqueeze(0))[0], value, atol=1e-4)
    # other keys from generic text (not those C was measured on) move little
    later = text_chunks(tiny_tokenizer, WIKI, 6000, prefix_id=1)[-10:]
    others = raw_keys(loaded, 1, later)
    moved = (others @ update.T).norm(dim=1)
    assert moved.pow(2).mean().sqrt() < 0.3 * (update @ key.double()).norm()


def test_rome_writes_its_v_star_into_the_projection(tiny_tokenizer, tmp_path, items):
    loaded = tiny(tiny_tokenizer, "gpt2")
    edit = get_method("rome", **{**FAST_ROME, "max_items": None}).fit(
        context(loaded, items[:1], tmp_path, layer=1))
    (name, delta), = edit.deltas().items()
    assert name == "transformer.h.1.mlp.c_proj.weight"
    edit.restore(loaded)
    request = build_requests(loaded, items[:1], 1)[0]
    path = loaded.arch.mlp_out_proj_path(1)
    settings = RomeConfig(**{**FAST_ROME, "max_items": None})
    target = optimise_target(loaded, UpperForward(loaded.model, loaded.arch, 1), request, path,
                             settings).target
    key = collect_at_subjects(loaded, [request], key_layers=[1])[0][1][0]
    proj = get_module(loaded.model, path)
    assert torch.allclose(key @ delta, target - proj(key.unsqueeze(0))[0], atol=1e-4)
    assert edit.info["items_edited"] == 1 and edit.info["layer"] == 1


@pytest.mark.parametrize("arch", ["gpt2", "sharp-llama"])
def test_rome_lowers_the_bias_loss_restores_exactly_and_repeats(tiny_tokenizer, tmp_path, items,
                                                                arch):
    loaded = sharp_llama(tiny_tokenizer) if arch == "sharp-llama" else tiny(tiny_tokenizer, arch)
    original = logits(loaded.model)
    edit = get_method("rome", **FAST_ROME).fit(context(loaded, items[:6], tmp_path, layer=1))
    assert edit.info["items_edited"] == 3 and len(set(edit.info["item_ids"])) == 3
    assert set(edit.info["item_ids"]) <= {i.id for i in items[:6]}
    assert edit.info["v_bias_loss_after"] < 0.95 * edit.info["v_bias_loss_before"]
    deltas = edit.deltas()
    assert list(deltas) == [loaded.arch.mlp_out_proj_path(1) + ".weight"]
    assert edit.parameters_changed() == deltas[next(iter(deltas))].numel()
    edit.restore(loaded)
    assert torch.equal(logits(loaded.model), original)
    again = get_method("rome", **FAST_ROME).fit(context(loaded, items[:6], tmp_path, layer=1))
    assert again.info["item_ids"] == edit.info["item_ids"]
    assert all(torch.equal(deltas[n], d) for n, d in again.deltas().items())


def test_rome_and_memit_shrink_the_edited_gaps(tiny_tokenizer, tmp_path, items):
    free = dict(clamp_norm_factor=4.0)
    loaded = sharp_llama(tiny_tokenizer)
    before = mean_abs_gap(loaded, items[:6])
    get_method("rome", **{**FAST_ROME, **free, "max_items": None}).fit(
        context(loaded, items[:6], tmp_path, layer=1))
    assert mean_abs_gap(loaded, items[:6]) < 0.5 * before
    loaded = sharp_llama(tiny_tokenizer)
    get_method("memit", **{**FAST_MEMIT, **free, "layers": "0,1", "mom2_update_weight": 10.0}
               ).fit(context(loaded, items[:6], tmp_path, layer=1))
    assert mean_abs_gap(loaded, items[:6]) < 0.8 * before


# -- MEMIT ----------------------------------------------------------------------------------------


def test_memit_layers_option():
    assert edit_layers("", 20, 30) == [16, 17, 18, 19, 20]
    assert edit_layers("", 2, 3) == [0, 1, 2]
    assert edit_layers("3, 1,2", 5, 30) == [1, 2, 3]
    assert edit_layers([4, 5], 0, 30) == [4, 5]
    for bad, match in (("1,x", "comma-separated"), ("1,40", "out of range"), ("2,2", "repeat")):
        with pytest.raises(FairstampError, match=match):
            edit_layers(bad, 2, 30)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_memit_writes_z_into_the_named_layers_only(tiny_tokenizer, tmp_path, items, arch):
    loaded = tiny(tiny_tokenizer, arch)
    original = logits(loaded.model)
    weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    edit = get_method("memit", **FAST_MEMIT, mom2_update_weight=10.0).fit(
        context(loaded, items[:6], tmp_path))
    named = {loaded.arch.mlp_out_proj_path(i) + ".weight" for i in (1, 2)}
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, weights[n])}
    assert changed == named == set(edit.deltas())
    assert edit.info["layers"] == [1, 2] and edit.info["items_edited"] == 6
    assert edit.info["v_bias_loss_after"] < 0.95 * edit.info["v_bias_loss_before"]
    errors = edit.info["z_error_by_layer"]  # ‖z* − layer-2 output‖ before each layer, after all
    assert len(errors) == 3 and errors[1] < 0.9 * errors[0] and errors[2] < 0.3 * errors[0]
    edit.restore(loaded)
    assert torch.equal(logits(loaded.model), original)


def test_memit_refuses_bad_settings_and_leaves_the_model(tiny_tokenizer, tmp_path, items):
    loaded = tiny(tiny_tokenizer, "llama")
    original = logits(loaded.model)
    with pytest.raises(FairstampError, match="v_num_grad_steps"):
        get_method("memit", **{**FAST_MEMIT, "v_num_grad_steps": 0}).fit(
            context(loaded, items[:2], tmp_path))
    assert torch.equal(logits(loaded.model), original)


@pytest.mark.slow
def test_rome_and_memit_on_smollm2(smollm2, tmp_path):
    items = load_stereoset(bias_types=["gender"], limit=4)
    before = mean_abs_gap(smollm2, items)
    common = dict(v_num_grad_steps=8, framings=1, n_tokens=2000)
    for name, extra in (("rome", {}), ("memit", {"layers": "19,20", "mom2_update_weight": 1500})):
        edit = get_method(name, **common, **extra).fit(context(smollm2, items, tmp_path, 20))
        try:
            after = mean_abs_gap(smollm2, items)
            assert after < 0.8 * before
            assert np.isfinite(edit.info["v_loss_after"])
        finally:
            edit.restore(smollm2)
    assert mean_abs_gap(smollm2, items) == before
