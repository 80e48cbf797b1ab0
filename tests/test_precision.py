"""Mixed precision: the frozen model in bfloat16 (or float16), the stamp, its optimiser state and
the training loss in float32, and `--dtype` checked before any model work.

Tolerance of bfloat16 against float32 scores on the tiny model: 0.005 nats per token (bfloat16
keeps 8 significant bits; the measured difference on these sentences is 0.0004)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.cli.main import main
from fairstamp.cli.validate import check_placement
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.wikitext import generic_sentences
from fairstamp.errors import FairstampError
from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.models import load
from fairstamp.scoring import Scorer
from fairstamp.stamp import Stamp, new_stamp
from fairstamp.stamp.module import StampedMLP

BF16_MEAN_ATOL = 0.005
GENERIC = SHARED_DATA / "wikitext2" / "pytorch_examples" / "valid.txt"
SENTENCES = ["The chess player was asian.", "The mother was caring and kind.",
             "The nurse said that she would be late.", "The nurse said that he would be late."]


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=6)


@pytest.fixture
def bf16(tiny_model_dir):
    return load(str(tiny_model_dir), dtype="bfloat16")


def test_bfloat16_load_has_bfloat16_weights_and_records_it(bf16):
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert bf16.dtype == torch.bfloat16
    assert bf16.placement() == {"dtype": "bfloat16", "device_map": None}
    assert bf16.info["dtype"] == "bfloat16"


def test_bfloat16_scores_are_close_to_float32(bf16, tiny_model_dir):
    full = Scorer.from_loaded(load(str(tiny_model_dir))).score(SENTENCES)
    half = Scorer.from_loaded(bf16).score(SENTENCES)
    assert half.mean.dtype == np.float64
    np.testing.assert_array_equal(half.n_tokens, full.n_tokens)
    np.testing.assert_allclose(half.mean, full.mean, rtol=0, atol=BF16_MEAN_ATOL)
    assert not np.array_equal(half.mean, full.mean)  # it did compute in bfloat16


def test_the_stamp_stays_float32_and_its_output_joins_in_the_host_dtype(bf16):
    stamp = new_stamp(bf16, 1, width=8)
    with torch.no_grad():
        stamp.module.down.bias.fill_(0.5)  # a stamp with an effect
    wrapper = stamp.attach_to(bf16)
    assert isinstance(wrapper, StampedMLP)
    assert {p.dtype for p in stamp.module.parameters()} == {torch.float32}
    h = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    out = wrapper(h)
    assert out.dtype == torch.bfloat16
    expected = wrapper.base_layer(h) + stamp.module(h.float()).to(torch.bfloat16)
    torch.testing.assert_close(out, expected)


def test_a_short_training_run_on_bfloat16_changes_the_float32_stamp(bf16, items, monkeypatch):
    import fairstamp.fast.train as train
    import fairstamp.training.loop as loop

    seen: dict[str, list] = {"loss": [], "state": []}
    real_loss, real_adam = loop._loss, torch.optim.Adam

    def loss(*args, **kwargs):
        value, terms = real_loss(*args, **kwargs)
        seen["loss"].append(value.dtype)
        return value, terms

    class Adam(real_adam):
        def step(self, closure=None):
            result = super().step(closure)
            seen["state"] += [t.dtype for s in self.state.values() for t in s.values()
                              if torch.is_tensor(t) and t.dim()]
            return result

    monkeypatch.setattr(loop, "_loss", loss)
    monkeypatch.setattr(train.torch.optim, "Adam", Adam)
    config = FitConfig(width=8, max_steps=3, check_every=3, batch_pairs=4, batch_kl=2,
                       framings=1, lr=1e-2, min_steps=100)
    result = fit_stamp(bf16, items, 1, retention_sentences=["Christians celebrate Easter."],
                       generic_sentences=generic_sentences(GENERIC, 4), config=config,
                       progress=False)
    module = result.stamp.module
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert module.down.weight.abs().sum() > 0  # zero-initialised, trained away from zero
    assert set(seen["loss"]) == {torch.float32}
    assert seen["state"] and set(seen["state"]) == {torch.float32}
    assert result.stamp.config.model_dtype == "bfloat16"
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_a_stamp_is_checked_across_precisions(tiny_model_dir, bf16, tmp_path):
    full = load(str(tiny_model_dir))
    made_full = new_stamp(full, 1, width=4)
    assert set(made_full.config.fingerprints) == {"bfloat16", "float16"}
    made_full.save_pretrained(tmp_path / "from-float32")
    new_stamp(bf16, 1, width=4).save_pretrained(tmp_path / "from-bfloat16")
    # Each attaches to the same checkpoint loaded in the other precision.
    Stamp.from_pretrained(tmp_path / "from-float32", bf16).detach_from(bf16)
    Stamp.from_pretrained(tmp_path / "from-bfloat16", full).detach_from(full)
    # Other weights are still refused in either precision.
    with torch.no_grad():
        bf16.model.model.layers[0].mlp.up_proj.weight.mul_(2)
        full.model.model.layers[0].mlp.up_proj.weight.mul_(2)
    for folder, model in (("from-float32", bf16), ("from-bfloat16", full)):
        with pytest.raises(FairstampError, match="different weights"):
            Stamp.from_pretrained(tmp_path / folder, model)


def test_float16_on_the_cpu_is_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fairstamp.cli.validate"):
        placement = check_placement(dtype="float16")
    assert placement["dtype"] == "float16"
    assert "float16 on the CPU" in caplog.text
    with caplog.at_level(logging.WARNING, logger="fairstamp.cli.validate"):
        caplog.clear()
        check_placement(dtype="bfloat16")
    assert not caplog.text


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bad_dtype_is_refused_with_the_choices(tmp_path, monkeypatch, capsys):
    import fairstamp.models

    monkeypatch.setattr(fairstamp.models, "load",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    for command in (["score", "-"], ["eval", "-o", str(tmp_path / "e")],
                    ["trace", "-o", str(tmp_path / "t")], ["debias", "-o", str(tmp_path / "d")]):
        code, _, err = run([*command, "--model", "nowhere", "--dtype", "half"], capsys)
        assert code == 2, command
        assert "--dtype 'half': choose one of float32, bfloat16, float16" in err
        assert not (tmp_path / "e").exists()


def test_eval_in_bfloat16_records_its_dtype(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "stereoset",
                        "--limit", "3", "--bootstrap", "0", "--no-rule-paraphrases",
                        "--dtype", "bfloat16", "-o", str(out)], capsys)
    assert code == 0, err
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert (model["dtype"], model["device_map"]) == ("bfloat16", None)
