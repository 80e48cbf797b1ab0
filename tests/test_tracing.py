import json

import numpy as np
import pytest
import torch

from conftest import ARCHS, SHARED_DATA
from fairstamp.cli.main import main
from fairstamp.data.items import BiasItem
from fairstamp.data.stereoset import load_stereoset
from fairstamp.models.archspec import arch_spec_for
from fairstamp.models.loader import LoadedModel
from fairstamp.scoring import Scorer
from fairstamp.tracing import (
    Corruption,
    Restoration,
    TokenGroup,
    TraceResult,
    gap_metric,
    gaussian_noise,
    item_tokens,
    patch_activations,
    trace_bias,
    window_layers,
)
from fairstamp.tracing.patching import embedding_std

STEREOSET_DEV = SHARED_DATA / "stereoset" / "dev.json"


@pytest.fixture(scope="module")
def gender_items():
    return load_stereoset(STEREOSET_DEV, bias_types=["gender"], limit=3)


def loaded_tiny(tiny_models, tiny_tokenizer, arch="llama") -> LoadedModel:
    model = tiny_models[arch]
    return LoadedModel(model=model, tokenizer=tiny_tokenizer, arch=arch_spec_for(model),
                       name=f"tiny-{arch}", source="local", path="")


def setup_group(loaded, item, samples=3, seed=0, scale=3.0):
    """The pieces `trace_bias` builds for one item: tokens, corruption and metric."""
    scorer = Scorer(loaded.model, loaded.tokenizer)
    tokens = item_tokens(scorer, item)
    group = TokenGroup.from_sequences([tokens.stereo, tokens.anti], scorer.pad_token_id)
    mask = torch.zeros((2, group.width), dtype=torch.bool)
    for g, positions in enumerate(tokens.corrupted):
        mask[g, list(positions)] = True
    hidden = loaded.model.get_input_embeddings().weight.shape[1]
    noise = gaussian_noise(samples, group.width, hidden,
                           scale * embedding_std(loaded.model, loaded.arch),
                           torch.Generator().manual_seed(seed))
    return tokens, group, Corruption(mask=mask, noise=noise), gap_metric(group)


def count_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_window_layers_are_centred_and_clipped():
    assert window_layers(4, 1, 10) == (4,)
    assert window_layers(4, 3, 10) == (3, 4, 5)
    assert window_layers(4, 4, 10) == (2, 3, 4, 5)
    assert window_layers(0, 3, 10) == (0, 1)
    assert window_layers(9, 3, 10) == (8, 9)
    assert window_layers(1, 10, 3) == (0, 1, 2)
    with pytest.raises(ValueError):
        window_layers(0, 0, 10)
    with pytest.raises(ValueError):
        window_layers(10, 1, 10)


def test_corrupted_tokens_are_the_target_else_the_difference(tiny_tokenizer, tiny_models):
    scorer = Scorer(tiny_models["llama"], tiny_tokenizer)
    item = BiasItem(id="a", source="user", bias_type="gender", target="Schoolgirl",
                    stereo="The schoolgirl was very innocent.",
                    anti="The schoolgirl was very tough.")
    tokens = item_tokens(scorer, item)
    assert tokens.rule == "target" and tokens.aligned
    span = tokens.corrupted[0]
    assert list(span) == list(range(span[0], span[-1] + 1))
    assert tiny_tokenizer.decode([tokens.stereo[p] for p in span]).strip() == "schoolgirl"
    assert tokens.stereo[0] == tiny_tokenizer.bos_token_id

    absent = BiasItem(id="b", source="user", bias_type="gender", target="women",
                      stereo="She was very innocent.", anti="She was very tough.")
    tokens = item_tokens(scorer, absent)
    assert tokens.rule == "difference"
    for seq, span, word in ((tokens.stereo, tokens.corrupted[0], "innocent"),
                            (tokens.anti, tokens.corrupted[1], "tough")):
        assert word in tiny_tokenizer.decode([seq[p] for p in span])
        assert "very" not in tiny_tokenizer.decode([seq[p] for p in span])


def test_clean_gap_is_the_scorers_gap(tiny_models, tiny_tokenizer, gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, "gpt2")
    scores = Scorer(loaded.model, tiny_tokenizer).score(
        [s for it in gender_items for s in (it.stereo, it.anti)])
    for reduction in ("mean", "sum"):
        result = trace_bias(loaded, gender_items, components=("mlp",), samples=1,
                            reduction=reduction, heatmap_items=0)
        expected = scores.by(reduction)[0::2] - scores.by(reduction)[1::2]
        np.testing.assert_allclose(result.clean_gaps, expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_restoring_the_last_layer_everywhere_gives_the_clean_gap(arch, tiny_models,
                                                                  tiny_tokenizer, gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, arch)
    n_layers = loaded.num_layers
    _, group, corruption, metric = setup_group(loaded, gender_items[0])
    everywhere = tuple(tuple(range(n)) for n in group.lengths)
    restorations = [Restoration("resid", (n_layers - 1,), everywhere),
                    Restoration("mlp", (), everywhere)]
    result = patch_activations(loaded.model, loaded.arch, group, corruption, restorations, metric)
    assert abs(result.clean - float(result.corrupted.mean())) > 1e-4  # corruption moved the gap
    effects = result.effects()
    assert effects[0].item() == pytest.approx(1.0, abs=1e-5)
    assert effects[1].item() == pytest.approx(0.0, abs=1e-6)
    # the no-restoration run is the corrupted run itself
    torch.testing.assert_close(result.restored[1], result.corrupted, rtol=0, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_restorations_equal_one_per_forward(arch, tiny_models, tiny_tokenizer,
                                                    gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, arch)
    tokens, group, corruption, metric = setup_group(loaded, gender_items[1])
    last = tuple((p[-1],) for p in tokens.corrupted)
    restorations = [Restoration(c, window_layers(layer, window, loaded.num_layers), last)
                    for c in ("mlp", "attn", "resid") for layer in range(loaded.num_layers)
                    for window in (1, 2)]
    restorations.append(Restoration("mlp", (1,), tuple((p,) for p in (3, 4))))
    batched = patch_activations(loaded.model, loaded.arch, group, corruption, restorations,
                                metric)
    single = patch_activations(loaded.model, loaded.arch, group, corruption, restorations,
                               metric, max_batch_tokens=1)
    torch.testing.assert_close(batched.restored, single.restored, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.corrupted, single.corrupted, rtol=0, atol=1e-5)
    np.testing.assert_allclose(batched.effects().numpy(), single.effects().numpy(), atol=1e-4)
    # restorations that touch anything change the metric: the hooks do act
    assert (batched.restored - batched.corrupted).abs().max() > 1e-5


def test_restoring_before_the_corruption_changes_nothing(tiny_models, tiny_tokenizer,
                                                         gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer)
    tokens, group, corruption, metric = setup_group(loaded, gender_items[0])
    first = min(min(p) for p in tokens.corrupted)
    assert first >= 1
    restorations = [Restoration(c, (layer,), ((0,), (0,))) for c in ("mlp", "attn", "resid")
                    for layer in range(loaded.num_layers)]
    result = patch_activations(loaded.model, loaded.arch, group, corruption, restorations, metric)
    np.testing.assert_allclose(result.effects().numpy(), 0.0, atol=1e-5)


def test_hooks_are_removed_after_a_trace_and_when_the_metric_raises(tiny_models, tiny_tokenizer,
                                                                     gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, "opt")
    before = count_hooks(loaded.model)
    trace_bias(loaded, gender_items[:1], samples=2, heatmap_items=1)
    assert count_hooks(loaded.model) == before

    tokens, group, corruption, _ = setup_group(loaded, gender_items[0])
    calls = []

    def failing(logits):
        calls.append(logits.shape)
        if len(calls) == 2:  # the clean run passes, the first corrupted batch fails
            raise RuntimeError("metric failed")
        return logits.new_zeros(logits.shape[0])

    restorations = [Restoration("mlp", (0,), tuple((p[-1],) for p in tokens.corrupted))]
    with pytest.raises(RuntimeError, match="metric failed"):
        patch_activations(loaded.model, loaded.arch, group, corruption, restorations, failing)
    assert count_hooks(loaded.model) == before
    # the model still computes its own clean logits
    with torch.no_grad():
        a = loaded.model(group.input_ids[:1]).logits
        b = loaded.model(group.input_ids[:1]).logits
    torch.testing.assert_close(a, b)


def test_same_seed_same_result_different_seed_different(tiny_models, tiny_tokenizer,
                                                        gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, "qwen2")
    runs = [trace_bias(loaded, gender_items, samples=2, seed=s, heatmap_items=1)
            for s in (7, 7, 8)]
    a, b, c = (r.to_dict() for r in runs)
    for record in (a, b, c):
        record.pop("timing")
    assert json.dumps(a) == json.dumps(b)
    assert not np.allclose(runs[0].corrupted_gaps, runs[2].corrupted_gaps)
    np.testing.assert_array_equal(runs[0].clean_gaps, runs[2].clean_gaps)


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_bias_runs_on_every_architecture(arch, tiny_models, tiny_tokenizer, gender_items):
    loaded = loaded_tiny(tiny_models, tiny_tokenizer, arch)
    result = trace_bias(loaded, gender_items[:2], samples=2, window=2, heatmap_items=1)
    assert result.num_layers == 3
    for c in ("mlp", "attn", "resid"):
        assert result.profiles[c].shape == (2, 3)
        assert result.average[c].shape == (3,)
        assert np.isfinite(result.average[c]).all()
    heatmap = result.heatmaps[0]
    tokens = item_tokens(Scorer(loaded.model, tiny_tokenizer), gender_items[0])
    assert len(heatmap.tokens) == max(len(tokens.stereo), len(tokens.anti))
    assert heatmap.effects["mlp"].shape == (3, len(heatmap.tokens))
    first = min(heatmap.corrupted)
    assert (heatmap.effects["mlp"][:, :first] == 0).all()
    if tokens.aligned:  # the heat-map's last-corrupted-token column is the item's profile
        last = tokens.corrupted[0][-1]
        np.testing.assert_allclose(heatmap.effects["resid"][:, last], result.profiles["resid"][0],
                                   atol=1e-4)
    # resid of the last layer restored at the last corrupted token: only that token's own
    # prediction is clean again, so the effect is well defined and finite
    assert np.isfinite(result.profiles["resid"]).all()


def test_average_is_a_sign_aligned_ratio_of_sums_and_round_trips():
    result = TraceResult(
        item_ids=["a", "b", "c"], num_layers=3, components=("mlp",),
        clean_gaps=np.array([1.0, -1.0, 0.5]), corrupted_gaps=np.array([0.0, 0.0, 0.5]),
        restored_gaps={"mlp": np.array([[0.5, 1.0, 0.0], [-0.5, 0.0, -1.0], [0.7, 0.5, 0.5]])},
        corrupted_positions=[[[1], [1]]] * 3, corruption_rules=["target"] * 3,
        config={"samples": 1})
    profiles = result.profiles["mlp"]
    np.testing.assert_allclose(profiles[0], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(profiles[1], [0.5, 0.0, 1.0])
    assert np.isnan(profiles[2]).all()  # corruption did not move this item's gap
    # Σ sign(d)(restored − corrupted) / Σ|d|: item c has weight 0
    np.testing.assert_allclose(result.average["mlp"], [0.5, 0.5, 0.5])
    result.restored_gaps["mlp"][0] = [0.5, 1.0, 0.2]
    np.testing.assert_allclose(result.average["mlp"], [0.5, 0.5, 0.6])
    assert result.ranked_layers("mlp") == [2, 0, 1]
    assert result.decisive_layer("mlp") == 2
    with pytest.raises(ValueError, match="not traced"):
        result.decisive_layer("attn")
    record = json.loads(json.dumps(result.to_dict()))
    assert record["profiles"]["mlp"][2] == [None, None, None]
    again = TraceResult.from_dict(record)
    np.testing.assert_allclose(again.average["mlp"], result.average["mlp"])
    assert again.to_dict() == record


def test_decisive_layer_can_skip_the_first_layer():
    result = TraceResult(
        item_ids=["a"], num_layers=3, components=("mlp",), clean_gaps=np.array([1.0]),
        corrupted_gaps=np.array([0.0]), restored_gaps={"mlp": np.array([[0.9, 0.2, 0.4]])},
        corrupted_positions=[[[1], [1]]], corruption_rules=["target"])
    assert result.decisive_layer("mlp") == 0
    assert result.decisive_layer("mlp", exclude_first=True) == 2


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write_bias_file(path):
    rows = [
        {"id": "u1", "source": "user", "bias_type": "gender", "target": "schoolgirl",
         "stereo": "The schoolgirl was innocent.", "anti": "The schoolgirl was tough."},
        {"id": "u2", "source": "user", "bias_type": "gender", "target": "mother",
         "stereo": "My mother is caring.", "anti": "My mother is cold."},
        {"id": "u3", "source": "user", "bias_type": "race", "target": "Ethiopian",
         "stereo": "Ethiopian men are skinny.", "anti": "Ethiopian men are fat."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trace_cli_writes_trace_json_plots_and_report(tmp_path, tiny_model_dir, capsys):
    data = write_bias_file(tmp_path / "items.jsonl")
    out = tmp_path / "trace"
    args = ["trace", "--model", str(tiny_model_dir), "--data", str(data), "--split", "all",
            "--bias-types", "gender", "--samples", "2", "--heatmap-items", "1", "--out", str(out)]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    assert "decisive layer" in stdout and "per item" in stdout
    record = json.loads((out / "trace.json").read_text())
    assert record["item_ids"] == ["u1", "u2"]
    assert record["model"] == str(tiny_model_dir) or record["model"]
    assert record["num_layers"] == 3
    assert set(record["average"]) == {"mlp", "attn", "resid"}
    assert len(record["profiles"]["mlp"]) == 2 and len(record["profiles"]["mlp"][0]) == 3
    assert record["decisive_layer"]["mlp"] == record["ranked_layers"]["mlp"][0]
    assert record["config"]["samples"] == 2 and record["config"]["seed"] == 0
    assert record["items"][0]["rule"] == "target"
    assert "torch" in record["library_versions"]
    assert record["timing"]["per_item_s"] > 0
    assert (out / "plots" / "layer_profile.png").stat().st_size > 1000
    for component in ("mlp", "attn", "resid"):
        assert (out / "plots" / f"heatmap_{component}_u1.png").is_file()
    assert "![layer profile](plots/layer_profile.png)" in (out / "report.md").read_text()
    again = TraceResult.from_dict(record)
    assert again.decisive_layer("mlp") == record["decisive_layer"]["mlp"]

    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already exists" in err
    code, _, _ = run_cli([*args, "--overwrite", "--components", "mlp", "--heatmap-items", "0"],
                         capsys)
    assert code == 0
    record = json.loads((out / "trace.json").read_text())
    assert list(record["average"]) == ["mlp"]
    assert not list((out / "plots").glob("heatmap_*"))


def test_trace_cli_on_stereoset_edit_split(tmp_path, tiny_model_dir, capsys):
    from fairstamp.data.splits import split_by_target

    out = tmp_path / "trace"
    code, _, _ = run_cli(["trace", "--model", str(tiny_model_dir), "--data", str(STEREOSET_DEV),
                          "--bias-types", "race", "--limit", "3", "--samples", "1",
                          "--heatmap-items", "0", "--components", "mlp", "--seed", "3",
                          "--out", str(out)], capsys)
    assert code == 0
    record = json.loads((out / "trace.json").read_text())
    edit, _ = split_by_target(load_stereoset(STEREOSET_DEV, bias_types=["race"]),
                              held_out_fraction=0.2, seed=3)
    assert record["item_ids"] == [item.id for item in edit[:3]]


def test_trace_cli_help_and_bad_split(tmp_path, tiny_model_dir, capsys):
    code, out, _ = run_cli(["trace", "--help"], capsys)
    assert code == 0 and "--heatmap-items" in out
    code, _, err = run_cli(["trace", "--model", str(tiny_model_dir), "--split", "train",
                            "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--split" in err


@pytest.mark.slow
def test_trace_smollm2_gender_profile(smollm2):
    items = load_stereoset(STEREOSET_DEV, bias_types=["gender"], limit=4)
    result = trace_bias(smollm2, items, components=("mlp",), samples=2, heatmap_items=0)
    assert result.num_layers == 30
    assert result.profiles["mlp"].shape == (4, 30)
    assert np.isfinite(result.average["mlp"]).all()
    assert np.isfinite(result.clean_gaps).all() and np.isfinite(result.corrupted_gaps).all()
    assert 0 <= result.decisive_layer("mlp") < 30
