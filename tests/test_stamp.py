"""The stamp as a module and an artefact: identity at zero, exact detach, stacking, persistence,
fingerprint checks; and the cached upper-layer forward it is trained through."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ARCHS, build_tiny_model
from fairstamp.errors import FairstampError
from fairstamp.models.archspec import arch_spec_for, get_module
from fairstamp.models.loader import LoadedModel
from fairstamp.scoring.upper import Batch, UpperForward
from fairstamp.stamp import (
    FairnessStamp,
    Stamp,
    StampedMLP,
    attach,
    detach,
    disabled,
    model_fingerprint,
    new_stamp,
    stamps_of,
)

SEQS = [[1, 5, 6, 7, 8, 9, 10], [1, 11, 12, 13]]


def loaded_tiny(arch: str, tokenizer=None, seed: int = 0) -> LoadedModel:
    model = build_tiny_model(arch, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch_spec_for(model),
                       name=f"tiny-{arch}", source="local", path="-")


def logits(model, seqs=SEQS):
    batch = Batch.of(seqs, 0)
    with torch.no_grad():
        return model(input_ids=batch.ids, attention_mask=batch.mask,
                     position_ids=batch.positions).logits


def randomise(stamp: FairnessStamp, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stamp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_initialised_stamp_changes_no_logit_and_detach_is_exact(arch):
    loaded = loaded_tiny(arch)
    before = logits(loaded.model)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    stamp = new_stamp(loaded, 1, width=8)
    stamp.attach_to(loaded)
    assert isinstance(get_module(loaded.model, loaded.arch.mlp_path(1)), StampedMLP)
    assert torch.equal(logits(loaded.model), before)
    randomise(stamp.module)
    assert not torch.allclose(logits(loaded.model), before)
    stamp.detach_from(loaded)
    assert not isinstance(get_module(loaded.model, loaded.arch.mlp_path(1)), StampedMLP)
    assert torch.equal(logits(loaded.model), before)
    after = loaded.model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)


def test_disabled_context_and_stacking_order():
    loaded = loaded_tiny("llama")
    before = logits(loaded.model)
    first, second = new_stamp(loaded, 1, width=8, seed=1), new_stamp(loaded, 1, width=8, seed=2)
    randomise(first.module, 1)
    randomise(second.module, 2)
    first.attach_to(loaded)
    only_first = logits(loaded.model)
    second.attach_to(loaded)
    both = logits(loaded.model)
    assert [s for _, s in stamps_of(loaded.model, loaded.arch)] == [first.module, second.module]
    assert not torch.allclose(both, only_first)
    with disabled(loaded.model, loaded.arch):
        assert torch.equal(logits(loaded.model), before)
    with disabled(loaded.model, loaded.arch, [second.module]):
        assert torch.equal(logits(loaded.model), only_first)
    assert torch.equal(logits(loaded.model), both)  # restored on exit
    with pytest.raises(RuntimeError), disabled(loaded.model, loaded.arch):
        raise RuntimeError("boom")
    assert first.module.enabled and second.module.enabled
    assert detach(loaded.model, loaded.arch, second.module) == 1
    assert torch.equal(logits(loaded.model), only_first)
    assert detach(loaded.model, loaded.arch) == 1
    assert torch.equal(logits(loaded.model), before)


def test_stamp_reading_the_mlp_input():
    loaded = loaded_tiny("gpt2")
    before = logits(loaded.model)
    stamp = new_stamp(loaded, 0, width=8, reads="mlp_input")
    stamp.attach_to(loaded)
    assert torch.equal(logits(loaded.model), before)
    randomise(stamp.module)
    assert not torch.allclose(logits(loaded.model), before)


def test_gemma3_stamp_adds_to_the_residual_stream_after_the_post_feed_forward_norm():
    loaded = loaded_tiny("gemma3_text")
    layer = loaded.arch.layer(loaded.model, 1)
    stamp = new_stamp(loaded, 1, width=8)
    randomise(stamp.module)
    stamp.attach_to(loaded)
    assert layer.post_feedforward_layernorm.base_layer is not None  # the norm is wrapped
    seen = {}
    layer.pre_feedforward_layernorm.register_forward_hook(
        lambda m, a, out: seen.__setitem__("residual", a[0]))  # the residual after attention
    layer.register_forward_hook(lambda m, a, out: seen.__setitem__(
        "out", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        logits(loaded.model)
        normed = layer.post_feedforward_layernorm.base_layer(
            layer.mlp(layer.pre_feedforward_layernorm(seen["residual"])))
    # layer output = residual + norm(mlp) + stamp(norm(mlp)): the write is not renormalised
    expected = seen["residual"] + normed + stamp.module(normed)
    assert torch.allclose(seen["out"], expected, atol=1e-5)
    with pytest.raises(FairstampError, match="reading the MLP's input"):
        new_stamp(loaded, 0, width=8, reads="mlp_input").attach_to(loaded)


def test_a_stamp_made_for_another_site_is_refused(tmp_path):
    loaded = loaded_tiny("gemma3_text")
    stamp = new_stamp(loaded, 1, width=8)
    assert stamp.config.site == "post_feedforward_layernorm"
    stamp.save_pretrained(tmp_path / "stamp")
    path = tmp_path / "stamp" / "stamp_config.json"
    config = json.loads(path.read_text())
    del config["site"]  # written before the site was recorded: Gemma 3 stamps sat before the norm
    path.write_text(json.dumps(config))
    with pytest.raises(FairstampError, match="train it again"):
        Stamp.from_pretrained(tmp_path / "stamp", loaded_tiny("gemma3_text"))
    config["site"] = "mlp"
    path.write_text(json.dumps(config))
    with pytest.raises(FairstampError, match="'mlp' of layer 1"):
        Stamp.from_pretrained(tmp_path / "stamp", loaded_tiny("gemma3_text"))


def test_save_load_gives_the_same_logits(tmp_path):
    loaded = loaded_tiny("qwen2")
    stamp = new_stamp(loaded, 2, width=8, seed=3)
    randomise(stamp.module)
    stamp.attach_to(loaded)
    expected = logits(loaded.model)
    stamp.save_pretrained(tmp_path / "stamp", extra_files={"edited_items.json": ["a"]})
    config = json.loads((tmp_path / "stamp" / "stamp_config.json").read_text())
    assert config["layer"] == 2 and config["width"] == 8 and config["seed"] == 3
    assert config["fingerprint"] == model_fingerprint(loaded.model)
    assert (tmp_path / "stamp" / "edited_items.json").is_file()
    with pytest.raises(FileExistsError):
        stamp.save_pretrained(tmp_path / "stamp")

    fresh = loaded_tiny("qwen2")
    loaded_stamp = Stamp.from_pretrained(tmp_path / "stamp", fresh)
    assert loaded_stamp.layer == 2
    assert torch.equal(logits(fresh.model), expected)


def test_fingerprint_ignores_stamps_and_sees_weights():
    loaded = loaded_tiny("llama")
    fp = model_fingerprint(loaded.model)
    stamp = new_stamp(loaded, 0, width=4)
    randomise(stamp.module)
    stamp.attach_to(loaded)
    assert model_fingerprint(loaded.model) == fp
    other = loaded_tiny("llama", seed=1)
    assert model_fingerprint(other.model) != fp


def test_a_stamp_for_another_model_is_refused(tmp_path):
    loaded = loaded_tiny("llama")
    new_stamp(loaded, 0, width=4).save_pretrained(tmp_path / "s")
    with pytest.raises(FairstampError, match="different weights"):
        Stamp.from_pretrained(tmp_path / "s", loaded_tiny("llama", seed=7))
    with pytest.raises(FairstampError, match="made for tiny-llama"):
        Stamp.from_pretrained(tmp_path / "s", loaded_tiny("gpt2"))
    other = loaded_tiny("llama", seed=7)
    Stamp.from_pretrained(tmp_path / "s", other, check_fingerprint=False)  # warned, attached
    assert len(stamps_of(other.model, other.arch)) == 1


def test_broken_stamp_folders_are_reported(tmp_path):
    with pytest.raises(FairstampError, match="not a stamp folder"):
        Stamp.from_pretrained(tmp_path)
    loaded = loaded_tiny("llama")
    new_stamp(loaded, 0, width=4).save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "stamp_config.json").write_text("{")
    with pytest.raises(FairstampError, match="not valid JSON"):
        Stamp.from_pretrained(tmp_path / "s")


def test_layer_out_of_range():
    loaded = loaded_tiny("llama")
    with pytest.raises(FairstampError, match="out of range"):
        new_stamp(loaded, 3, width=4)
    with pytest.raises(FairstampError, match="out of range"):
        attach(loaded.model, loaded.arch, -1, FairnessStamp(32, 4))


@pytest.mark.parametrize("arch", ARCHS)
def test_upper_forward_from_cached_states_equals_the_full_forward(arch):
    loaded = loaded_tiny(arch)
    stamp = new_stamp(loaded, 1, width=8)
    randomise(stamp.module)
    stamp.attach_to(loaded)
    batch = Batch.of(SEQS, 0)
    rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 6, 0, 3])
    full = logits(loaded.model)[rows, cols]
    for layer in range(3):
        upper = UpperForward(loaded.model, loaded.arch, layer)
        hidden = upper.capture(batch)
        assert torch.allclose(upper.logits(batch, hidden, rows, cols), full, atol=1e-6)
    # The lower layers are back in place after every call.
    assert torch.equal(logits(loaded.model)[rows, cols], full)
