"""`Edit.save` → `Edit.load`: a saved edit put back on a fresh copy of its model gives the edited
model's outputs, `restore` takes it off again, and a folder without a loader is refused."""

from __future__ import annotations

import json

import pytest
import torch

from fairstamp.data.stereoset import load_stereoset
from fairstamp.errors import FairstampError
from fairstamp.methods import Edit, get_method
from test_fast import tiny
from test_methods_finetune import FT_QUICK, context
from test_stamp import logits


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=12)


@pytest.mark.parametrize(("method", "options"), [
    ("fast", dict(width=16, max_steps=4, check_every=2, batch_pairs=8, batch_kl=4, framings=1,
                  lr=1e-2, min_steps=100)),
    ("ft", FT_QUICK),
])
def test_a_saved_edit_loads_back_onto_a_fresh_model(tiny_tokenizer, items, tmp_path, method,
                                                    options):
    fitted_on = tiny(tiny_tokenizer)
    original = logits(fitted_on.model)
    edit = get_method(method, **options).fit(context(fitted_on, items))
    edited = logits(fitted_on.model)
    assert not torch.equal(edited, original)
    edit.save(tmp_path / method)

    fresh = tiny(tiny_tokenizer)
    loaded_edit = Edit.load(tmp_path / method, fresh)
    assert type(loaded_edit) is type(edit)
    assert loaded_edit.parameters_changed() == edit.parameters_changed()
    torch.testing.assert_close(logits(fresh.model), edited, rtol=0, atol=1e-5)
    loaded_edit.restore(fresh)
    assert torch.equal(logits(fresh.model), original)


def test_an_edit_folder_without_a_loader_is_refused(tmp_path):
    with pytest.raises(FairstampError, match="not a saved edit"):
        Edit.load(tmp_path, None)
    (tmp_path / "edit.json").write_text(json.dumps({"method": "rome"}))
    with pytest.raises(FairstampError, match="names no loader"):
        Edit.load(tmp_path, None)


@pytest.mark.parametrize(("method", "options"), [
    ("inlp", dict(n_iterations=2, max_sentences=30)),
    ("self_debias", {}),
])
def test_hook_and_wrapper_edits_load_back(tiny_tokenizer, tmp_path, method, options):
    from test_methods_projection import batch_logits as logits_and_mask
    from test_methods_projection import context as projection_context

    def batch_logits(loaded):
        logits_, mask = logits_and_mask(loaded)
        return logits_[mask]

    fitted_on = tiny(tiny_tokenizer)
    original = batch_logits(fitted_on)
    edit = get_method(method, **options).fit(projection_context(fitted_on))
    edited = batch_logits(fitted_on)
    assert not torch.equal(edited, original)
    edit.save(tmp_path / method)
    fresh = tiny(tiny_tokenizer)
    loaded_edit = Edit.load(tmp_path / method, fresh)
    torch.testing.assert_close(batch_logits(fresh), edited, rtol=0, atol=1e-5)
    loaded_edit.restore(fresh)
    assert torch.equal(batch_logits(fresh), original)
