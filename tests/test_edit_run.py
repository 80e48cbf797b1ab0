"""The edit run's settings: a layer out of range is refused from the model's config before any
model work, with the model's layer range; each CLI default is the config's."""

from __future__ import annotations

import inspect
import time
from dataclasses import replace

import pytest

from fairstamp.bench.runner import BenchConfig
from fairstamp.cli import bench as bench_cli
from fairstamp.cli import debias as debias_cli
from fairstamp.fast.train import FitConfig
from fairstamp.models.loader import peek_num_layers
from fairstamp.runs.config import EditRunConfig, defaults
from fairstamp.runs.debias import DebiasConfig
from test_fast import run_cli


def test_the_layer_count_comes_from_the_config_alone(tiny_model_dir):
    assert peek_num_layers(str(tiny_model_dir)) == 3


@pytest.mark.parametrize("command", ["debias", "bench"])
def test_a_layer_out_of_range_is_refused_early(command, tiny_model_dir, tmp_path, capsys):
    clock = time.perf_counter()
    assert run_cli([command, "--model", tiny_model_dir, "--layer", "999",
                    "--out", tmp_path / "x"]) == 2
    assert time.perf_counter() - clock < 5
    assert f"layer 999 is out of range: {tiny_model_dir} has 3 layers (0-2)" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_defaults_are_the_configs():
    run, fit = defaults(DebiasConfig), defaults(FitConfig)
    params = {name: p.default for name, p in
              inspect.signature(debias_cli.debias_command).parameters.items()}
    for name in ("width", "lr", "max_steps", "retention_weight", "generic_weight",
                 "keep_mean_weight", "sign_weight", "train_vocab", "pairs", "subject_score",
                 "counterfactual_weight", "counterfactual_target", "counterfactual_templates",
                 "counterfactual_substitutes"):
        assert params[name] == fit[name], name
    assert params["counterfactual_types"] == ",".join(fit["counterfactual_types"]) == ""
    assert params["keep_mean_smooth"] == fit["lm_smooth"]
    for name in ("layer", "layer_rule", "trace_items", "held_out_fraction", "folds", "seed"):
        assert params[name] == run[name], name
    assert params["bias_types"] == ",".join(run["bias_types"]) == "gender"
    bench = inspect.signature(bench_cli.bench_command).parameters
    assert bench["methods"].default.split(",") == defaults(BenchConfig)["methods"]
    assert bench["layer_rule"].default == run["layer_rule"]
    assert EditRunConfig(model="m").bias_types == ["gender"]


def test_quick_runs_a_small_transfer_suite_and_the_table_shows_it_before_and_after(
        tiny_model_dir):
    from fairstamp.reporting.before_after import comparison_rows
    from fairstamp.runs.config import QUICK_TRANSFER_LIMITS
    from fairstamp.runs.setup import prepare_edit

    quick = DebiasConfig(model="m", transfer_limits={"bold": 7}).quick()
    # --quick trains 60 steps where the length is automatic; an explicit one wins, shorter or
    # longer (as explicit suite limits do).
    assert quick.fit.max_steps == 60
    assert [DebiasConfig(model="m", fit=FitConfig(max_steps=n)).quick().fit.max_steps
            for n in (20, 120)] == [20, 120]
    assert quick.transfer_limits == {**QUICK_TRANSFER_LIMITS, "bold": 7}
    setup = prepare_edit(replace(quick, model=str(tiny_model_dir), limit=20))
    assert setup.eval_config.transfer_limits == quick.transfer_limits
    mv = {"value": 60.0, "ci_low": 55.0, "ci_high": 65.0, "n": 10}
    metrics = {"before": {"metrics": {"transfer": {"winobias": {"gap": mv}}}},
               "after": {"metrics": {"transfer": {"winobias": {"gap": {**mv, "value": 52.5}}}}}}
    assert ("WinoBias pro − anti gap (points)", "0", "60.0 [55.0, 65.0]", "52.5 [55.0, 65.0]",
            "-7.5", "10") in comparison_rows(metrics)
    held = {"held_out": {"ss": {"overall": {**mv, "n": 28}}, "n_items": 28, "n_targets": 1}}
    rows = comparison_rows({"before": {"metrics": held}, "after": {"metrics": held}})
    assert rows == [("SS on held-out targets", "50", "60.0 [55.0, 65.0]", "60.0 [55.0, 65.0]",
                     "+0.0", "28 (1 target)")]


def test_a_stamp_is_evaluated_on_a_bias_set_it_never_saw(tiny_model_dir, tmp_path):
    import json

    from conftest import SHARED_DATA

    run = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--data-dir", SHARED_DATA, "--bootstrap", "10"]
    assert run_cli(["debias", *common, "--bias-types", "gender", "--limit", "20", "--layer", "1",
                    "--suite", "stereoset", "--max-steps", "2", "--width", "4",
                    "--sign-weight", "0.5", "--out", run]) == 0
    fit = json.loads((run / "metrics.json").read_text())["fit"]
    assert fit["tokens"] > 0 and 0 < fit["check_seconds"] < fit["seconds"]
    assert (f"{fit['tokens']:,} tokens through the layers above the stamp"
            in (run / "report.md").read_text())
    assert "after the MLP of layer 1 (given); batch lean λ = 0.5 (given); 2 of at most 2" in \
        (run / "report.md").read_text()
    out = tmp_path / "eval"
    assert run_cli(["eval", *common, "--stamp", run, "--suite", "biascope", "--bias-types",
                    "religion", "--limit", "20", "--out", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "edited" not in metrics
    assert metrics["held_out"]["every_item_unedited"] is True
    assert metrics["held_out"]["n_items"] == 20
    report = (out / "report.md").read_text()
    assert "every item is on a target it never saw" in report
    n_targets = metrics["held_out"]["n_targets"]
    assert f"| 20 ({n_targets} target{'' if n_targets == 1 else 's'}) |" in report


def test_a_run_with_no_held_out_target_says_why_instead_of_dropping_the_row(tiny_model_dir,
                                                                            tmp_path):
    import json

    from conftest import SHARED_DATA
    from fairstamp.reporting.before_after import comparison_rows

    run = tmp_path / "run"
    assert run_cli(["debias", "--model", tiny_model_dir, "--data-dir", SHARED_DATA,
                    "--bootstrap", "10", "--bias-types", "gender", "--limit", "20", "--layer",
                    "1", "--suite", "biascope", "--max-steps", "2", "--width", "4",
                    "--held-out-fraction", "0", "--out", run]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    held_out = metrics["after"]["metrics"]["held_out"]
    assert held_out["n_items"] == 0 and "ss" not in held_out
    assert held_out["empty"].startswith("every one of the ")
    row = next(r for r in comparison_rows(metrics) if r[0] == "SS on held-out targets")
    assert row[2:4] == ("–", "–") and row[4].startswith("none: every one of the")
    assert row[5] == "0"
    assert "| SS on held-out targets | 50 | – | – | none: every one of the" in \
        (run / "report.md").read_text()


def test_an_edit_of_several_bias_types_records_the_recipe_it_trained_with(tiny_model_dir,
                                                                        tmp_path):
    import json

    from conftest import SHARED_DATA

    run = tmp_path / "run"
    assert run_cli(["debias", "--model", tiny_model_dir, "--data-dir", SHARED_DATA,
                    "--bootstrap", "10", "--bias-types", "gender,race", "--limit", "30",
                    "--layer", "1", "--suite", "stereoset", "--max-steps", "2", "--width", "4",
                    "--out", run]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {i["bias_type"] for i in json.loads((run / "edited_items.json").read_text())} == \
        {"gender", "race"}
    several = "measured for several bias types"
    assert (metrics["sign_weight"], metrics["sign_weight_source"]) == (1.0, several)
    assert metrics["counterfactual_weight_source"] == several
    assert metrics["fit"]["counterfactual_weight"] == 0.0
    assert (f"batch lean λ = 1 ({several}); L_c's weight δ = 0 ({several}); 2 of at most 2"
            in (run / "report.md").read_text())
