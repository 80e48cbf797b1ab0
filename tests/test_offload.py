"""Models larger than one device: a tiny model with some decoder layers and the unembedding
offloaded to disk by accelerate (their weights are `meta` between forward passes and loaded on
the fly by its AlignDevicesHook, as for any CPU or disk offload next to a GPU) scores, traces and
trains a stamp exactly as the same model loaded plainly.

Tolerance: everything runs on the same CPU with the same weights and the same operations, so the
results agree to float32 rounding; the tests allow an absolute 1e-5 (scores, trace gaps, losses)
and 1e-6 (stamp weights after training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.cli.main import main
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.wikitext import generic_sentences
from fairstamp.errors import FairstampError
from fairstamp.fast.train import FitConfig, fit_stamp
from fairstamp.models import load
from fairstamp.scoring import Scorer
from fairstamp.scoring.scorer import LowerLayerCache
from fairstamp.stamp import Stamp, model_fingerprint
from fairstamp.tracing import trace_bias
from fairstamp.utils.devices import execution_device, input_device

SCORE_ATOL = 1e-5
WEIGHT_ATOL = 1e-6
GENERIC = SHARED_DATA / "wikitext2" / "pytorch_examples" / "valid.txt"

#: The tiny Llama's modules: the embedding and layer 0 resident, layers 1-2 and the unembedding
#: on disk (the stamp goes into offloaded layer 1).
DISK_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu",
            "lm_head": "disk"}
SENTENCES = ["The chess player was asian.", "The mother was caring and kind.", "Hi.",
             "The nurse said that she would be late.", "The nurse said that he would be late."]


@pytest.fixture(scope="module")
def items():
    return load_stereoset(bias_types=["gender"], limit=6)


@pytest.fixture
def plain(tiny_model_dir):
    return load(str(tiny_model_dir))


@pytest.fixture
def offloaded(tiny_model_dir, tmp_path):
    return load(str(tiny_model_dir), device_map=DISK_MAP, offload_folder=tmp_path / "offload")


def test_the_offloaded_model_really_is_offloaded(offloaded):
    layer1 = offloaded.model.model.layers[1]
    assert {p.device.type for p in layer1.parameters()} == {"meta"}
    assert offloaded.model.lm_head.weight.device.type == "meta"
    assert execution_device(layer1.mlp) == torch.device("cpu")
    assert input_device(offloaded.model) == torch.device("cpu")
    assert offloaded.device_map == DISK_MAP
    assert offloaded.placement() == {"dtype": "float32", "device_map": DISK_MAP}
    assert offloaded.info["device_map"] == DISK_MAP


def test_fingerprint_reads_offloaded_weights(plain, offloaded):
    assert model_fingerprint(offloaded.model) == model_fingerprint(plain.model)
    assert {p.device.type for p in offloaded.model.model.layers[1].parameters()} == {"meta"}


def test_scores_equal_the_plain_load(plain, offloaded):
    expected = Scorer.from_loaded(plain).score(SENTENCES)
    got = Scorer.from_loaded(offloaded).score(SENTENCES)
    np.testing.assert_allclose(got.total, expected.total, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_array_equal(got.n_tokens, expected.n_tokens)
    # A packed batch (shared prefixes) and single rows both pass through the offloaded layers.
    spans = Scorer.from_loaded(offloaded).continuation_logprobs(
        ["The nurse said that", "The nurse said that"], [" she was late.", " he was late."])
    reference = Scorer.from_loaded(plain).continuation_logprobs(
        ["The nurse said that", "The nurse said that"], [" she was late.", " he was late."])
    for a, b in zip(spans, reference):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=SCORE_ATOL)


def test_lower_layer_cache_replays_over_offloaded_layers(plain, offloaded):
    expected = Scorer.from_loaded(plain).score(SENTENCES).total
    cache = LowerLayerCache(offloaded.model, offloaded.arch, 2)
    recorded = Scorer.from_loaded(offloaded, lower_cache=cache).score(SENTENCES).total
    replayed = Scorer.from_loaded(offloaded, lower_cache=cache.replay()).score(SENTENCES).total
    assert cache.replayed > 0
    np.testing.assert_allclose(recorded, expected, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(replayed, expected, rtol=0, atol=SCORE_ATOL)


def test_causal_trace_equals_the_plain_load(plain, offloaded, items):
    options = dict(components=("mlp", "resid"), samples=2, seed=0, heatmap_items=1,
                   progress=False)
    expected = trace_bias(plain, items[:2], **options)
    got = trace_bias(offloaded, items[:2], **options)
    np.testing.assert_allclose(got.clean_gaps, expected.clean_gaps, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(got.corrupted_gaps, expected.corrupted_gaps, rtol=0,
                               atol=SCORE_ATOL)
    for component in options["components"]:
        np.testing.assert_allclose(got.restored_gaps[component],
                                   expected.restored_gaps[component], rtol=0, atol=SCORE_ATOL)
        np.testing.assert_allclose(got.heatmaps[0].effects[component],
                                   expected.heatmaps[0].effects[component], rtol=0, atol=1e-4)


@pytest.mark.parametrize("train_vocab", ["full", "seen"])
def test_stamp_training_equals_the_plain_load(plain, offloaded, items, train_vocab, tmp_path):
    """A stamp in offloaded layer 1 (its MLP's weights are `meta`) trains to the same weights;
    "seen" copies rows of the offloaded unembedding."""
    config = FitConfig(width=8, max_steps=4, check_every=2, batch_pairs=4, batch_kl=2,
                       framings=1, lr=1e-2, min_steps=100, train_vocab=train_vocab)
    text = dict(retention_sentences=["Christians celebrate Easter."],
                generic_sentences=generic_sentences(GENERIC, 4))
    expected = fit_stamp(plain, items, 1, config=config, progress=False, **text)
    got = fit_stamp(offloaded, items, 1, config=config, progress=False, **text)
    assert got.stamp.module.device == torch.device("cpu")  # the MLP's execution device
    for name, tensor in expected.stamp.state_dict().items():
        torch.testing.assert_close(got.stamp.state_dict()[name], tensor, rtol=0,
                                   atol=WEIGHT_ATOL)
    assert [h["step"] for h in got.history] == [h["step"] for h in expected.history]
    for a, b in zip(got.history, expected.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=SCORE_ATOL)
        assert a["ss"] == b["ss"]
    # The stamped offloaded model scores as the stamped plain one, and the stamp saved from it
    # loads onto the plain model (same fingerprint).
    np.testing.assert_allclose(Scorer.from_loaded(offloaded).score(SENTENCES).total,
                               Scorer.from_loaded(plain).score(SENTENCES).total, rtol=0,
                               atol=SCORE_ATOL)
    got.stamp.save_pretrained(tmp_path / "stamp")
    expected.stamp.detach_from(plain)
    Stamp.from_pretrained(tmp_path / "stamp", plain)


def test_max_memory_offloads_what_does_not_fit(tiny_model_dir, plain, tmp_path):
    """--max-memory's route: device_map "auto" under a CPU budget smaller than the model puts
    the rest on disk."""
    loaded = load(str(tiny_model_dir), device_map="auto", max_memory={"cpu": 60_000},
                  offload_folder=tmp_path / "offload")
    assert "disk" in set(loaded.device_map.values())
    np.testing.assert_allclose(Scorer.from_loaded(loaded).score(SENTENCES).total,
                               Scorer.from_loaded(plain).score(SENTENCES).total, rtol=0,
                               atol=SCORE_ATOL)


def test_a_device_map_must_name_real_modules_and_cover_every_weight(tiny_model_dir):
    with pytest.raises(FairstampError, match=r"names modules it does not have: model\.layer\.1"):
        load(str(tiny_model_dir), device_map={**DISK_MAP, "model.layer.1": "cpu"})
    partial = {k: v for k, v in DISK_MAP.items() if k != "model.layers.2"}
    with pytest.raises(FairstampError, match=r"gives no device to model\.layers\.2"):
        load(str(tiny_model_dir), device_map=partial)


def test_a_placement_that_transformers_refuses_is_one_line(tiny_model_dir, monkeypatch):
    import transformers

    def refuse(*_, **__):
        raise ValueError("The current `device_map` had weights offloaded to the disk, which "
                         "needed to be re-saved.\nPlease provide an `offload_folder`.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(FairstampError, match=r"cannot place the model with this device map: "
                       r"The current .* re-saved\. \(pass --offload-folder\)$"):
        load(str(tiny_model_dir), device_map=DISK_MAP)


def test_weight_editing_refuses_offloaded_weights(offloaded):
    from fairstamp.methods.base import snapshot

    with pytest.raises(FairstampError, match="offloaded"):
        snapshot(offloaded.model, ["model.layers.1.mlp.down_proj.weight"])


# -- the CLI ------------------------------------------------------------------------------------

def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_score_cli_with_a_device_map_file_equals_the_plain_load(tmp_path, tiny_model_dir,
                                                                 capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(DISK_MAP))
    rows = []
    for extra in ([], ["--device-map", str(map_file), "--offload-folder", str(tmp_path / "o")]):
        code, out, err = run(["score", str(src), "--model", str(tiny_model_dir), *extra], capsys)
        assert code == 0, err
        rows.append([json.loads(line)["logprob_sum"] for line in out.splitlines()])
    np.testing.assert_allclose(rows[1], rows[0], rtol=0, atol=SCORE_ATOL)


def test_eval_records_dtype_and_device_map(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "stereoset",
                        "--limit", "3", "--bootstrap", "0", "--no-rule-paraphrases",
                        "--device-map", json.dumps(DISK_MAP), "-o", str(out)], capsys)
    assert code == 0, err
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert model["dtype"] == "float32"
    assert model["device_map"] == DISK_MAP


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "cpu", "--device-map", "auto"], "give one or the other"),
    (["--device-map", "{not json"], "not valid JSON"),
    (["--device-map", '{"model.layers.0": true}'], "expected a GPU number"),
    (["--device-map", "nowhere.json"], "no such file"),
    (["--device-map", "cuda:0"], "CUDA is not available"),
    (["--device-map", '{"lm_head": 0}'], "CUDA is not available"),
    (["--max-memory", "cpu"], "expected DEVICE=SIZE"),
    (["--max-memory", "cpu=lots"], "expected a size"),
    (["--max-memory", "gpu=1GiB"], "unknown device"),
    (["--max-memory", "0=1GiB"], "names GPU 0"),
    (["--device-map", '{"lm_head": "cpu"}', "--max-memory", "cpu=1GiB"], "not of"),
    (["--offload-folder", "somewhere"], "give one of them"),
])
def test_placement_options_are_refused_before_any_model_work(args, message, tmp_path,
                                                             monkeypatch, capsys):
    if ("CUDA" in message or "GPU" in message) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import fairstamp.models

    def refuse(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(fairstamp.models, "load", refuse)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["score", "-", "--model", "nowhere", *args], capsys)
    assert code == 2
    assert message in err
