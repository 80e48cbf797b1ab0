"""`fairstamp bench`: the method registry, the same-items run folder, resuming, failures."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.bench.runner import BenchConfig, run_bench
from fairstamp.cli.bench import parse_options
from fairstamp.errors import FairstampError
from fairstamp.methods import (
    Method,
    WeightEdit,
    get_method,
    method_class,
    method_names,
    register,
    snapshot,
)


@dataclass
class _ScaleConfig:
    factor: float = 0.5
    fail: bool = False


@register
class _ScaleUnembedding(Method):
    """A test method: scales the unembedding (changes every logit), or fails on request."""

    name = "test_scale"
    config_class = _ScaleConfig

    def fit(self, context):
        if self.config.fail:
            raise FairstampError("asked to fail")
        model = context.loaded.model
        name = next(n for n, _ in model.named_parameters() if "lm_head" in n or "embed" in n)
        originals = snapshot(model, [name])
        with torch.no_grad():
            dict(model.named_parameters())[name].mul_(self.config.factor)
        return WeightEdit(self.name, model, originals, {"factor": self.config.factor})


def config(tiny_model_dir, **overrides) -> BenchConfig:
    base = dict(model=str(tiny_model_dir), methods=["test_scale"], bias_types=["gender"],
                limit=12, suite="biascope", n_resamples=10, n_generic=8,
                data_dir=str(SHARED_DATA))
    return BenchConfig(**{**base, **overrides})


def test_registry_lists_builtin_methods_and_rejects_unknown_ones():
    assert method_names()[:8] == ["fast", "ft", "rome", "memit", "cda", "inlp",
                                  "sentence_debias", "self_debias"]
    assert method_class("test_scale") is _ScaleUnembedding
    with pytest.raises(FairstampError, match="unknown method 'nope'; available: fast"):
        method_class("nope")
    assert get_method("test_scale", factor="0.25").config.factor == 0.25
    with pytest.raises(FairstampError, match="test_scale has no option 'width'"):
        get_method("test_scale", width="3")
    with pytest.raises(FairstampError, match="cannot read 'x' as float"):
        get_method("test_scale", factor="x")
    fast = get_method("fast", width="16", keep_best="false")
    assert (fast.config.width, fast.config.keep_best) == (16, False)
    assert get_method("rome", max_items="60").config.max_items == 60
    for name in ("fast", "cda", "ft"):  # their fit takes the run's seed: an option would be ignored
        with pytest.raises(FairstampError, match=rf"{name}\.seed: the seed is the run's.*--seed"):
            get_method(name, seed="1")
        assert get_method(name).config_dict(7)["seed"] == 7  # the record says the run's seed
    assert get_method("test_scale").config_dict(7) == {"factor": 0.5, "fail": False}
    assert get_method("rome", max_items="none").config.max_items is None
    assert get_method("cda", modules="mlp_out,self_attn.o_proj").config.modules == (
        "mlp_out", "self_attn.o_proj")
    assert parse_options(["rome.v_lr=0.1", "rome.layers=3,4"]) == {
        "rome": {"v_lr": "0.1", "layers": "3,4"}}
    with pytest.raises(FairstampError, match=r"METHOD\.OPTION=VALUE"):
        parse_options(["v_lr=0.1"])


def test_bench_runs_methods_on_the_same_items_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    cfg = config(tiny_model_dir, methods=["test_scale", "fast"],
                 options={"fast": {"max_steps": "4", "width": "8", "check_every": "2",
                                   "batch_pairs": "4", "batch_kl": "2"}})
    results = run_bench(cfg, out, isolate=False, progress=False)
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["original", "fast", "test_scale"]  # built-ins first
    assert all(r["status"] == "done" for r in rows.values())
    # Scaling the unembedding changes scores; the original's predictions are the RS reference.
    assert rows["test_scale"]["ss_edited"] is not None
    assert rows["original"]["rs_unseen"] is None and rows["test_scale"]["rs_unseen"] is not None
    hidden = 32
    assert rows["fast"]["parameters_changed"] == 2 * hidden * 8 + 8 + hidden
    result = json.loads((out / "methods" / "fast" / "result.json").read_text())
    edited = json.loads((out / "methods" / "fast" / "metrics.json").read_text())
    assert edited["metrics"]["edited"]["n_edited_ids"] == result["n_edited"] > 0
    original = json.loads((out / "original" / "result.json").read_text())
    assert original["n_edited"] == result["n_edited"] and original["layer"] == result["layer"]
    for name in ("fast", "test_scale"):  # each method's edit was saved, no pickle
        assert (out / "methods" / name / "edit.json").is_file()
    assert (out / "methods" / "fast" / "stamp.safetensors").is_file()
    assert (out / "results.md").read_text().count("| fast |") == 1
    assert (out / "plots" / "tradeoff.png").stat().st_size > 1000

    # Resuming: nothing finished is recomputed; a new method is added to the same table.
    stamp = out / "methods" / "fast" / "metrics.json"
    before = stamp.stat().st_mtime_ns
    again = run_bench(config(tiny_model_dir, methods=["fast", "test_scale"],
                             options=cfg.options), out, isolate=False, progress=False)
    assert stamp.stat().st_mtime_ns == before
    assert [r["method"] for r in again["rows"]] == ["original", "fast", "test_scale"]

    with pytest.raises(FairstampError, match="other settings \\(seed\\)"):
        run_bench(config(tiny_model_dir, seed=1), out, isolate=False, progress=False)


def test_a_failing_method_is_recorded_and_the_others_still_run(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    cfg = config(tiny_model_dir, options={"test_scale": {"fail": "true"}})
    results = run_bench(cfg, out, isolate=False, progress=False)
    row = results["rows"][1]
    assert row["status"] == "failed" and "asked to fail" in row["error"]
    assert not (out / "methods" / "test_scale").exists()
    assert "failed: FairstampError: asked to fail" in (out / "results.md").read_text()


def test_bench_refuses_crows_pairs_as_training_data(tiny_model_dir):
    with pytest.raises(FairstampError, match="not be used to train"):
        config(tiny_model_dir, data="crows")


def test_each_method_runs_in_its_own_process(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    cfg = config(tiny_model_dir, methods=["fast"],
                 options={"fast": {"max_steps": "2", "width": "4", "check_every": "1"}})
    results = run_bench(cfg, out, isolate=True, progress=False)
    assert [r["status"] for r in results["rows"]] == ["done", "done"]
    result = json.loads((out / "methods" / "fast" / "result.json").read_text())
    assert result["isolated_process"] is True and result["peak_mib"] > 50


def test_bench_command_prints_the_table_and_writes_results(tiny_model_dir, tmp_path, capsys):
    from fairstamp.cli.main import main

    out = tmp_path / "bench"
    args = ["bench", "--model", str(tiny_model_dir), "--methods", "test_scale", "--limit", "12",
            "--suite", "biascope", "--bootstrap", "10", "--data-dir", str(SHARED_DATA),
            "--option", "test_scale.factor=0.9", "--in-process", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "fairstamp bench" in captured.out and "test_scale" in captured.out
    result = json.loads((out / "methods" / "test_scale" / "result.json").read_text())
    assert result["config"] == {"factor": 0.9, "fail": False}
    assert main([*args[:-2], "--option", "test_scale.nope=1", "--out", str(tmp_path / "b2")]) == 2
    assert "test_scale has no option 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists()
    assert main([*args[:-2], "--option", "fast.seed=1", "--out", str(tmp_path / "b3")]) == 2
    assert "fast.seed: the seed is the run's, shared by every method; use --seed" in \
        capsys.readouterr().err
    assert not (tmp_path / "b3").exists()


def test_bench_with_folds_adds_the_cross_validated_column(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    results = run_bench(config(tiny_model_dir, limit=60, folds=2, suite="stereoset"), out,
                        isolate=False, progress=False)
    rows = {row["method"]: row for row in results["rows"]}
    original, scaled = rows["original"], rows["test_scale"]
    # The original's row: every item scored by the unedited model, i.e. its own SS over all.
    assert original["ss_held_out_cv"] == original["ss"]
    assert scaled["ss_held_out_cv"] is not None
    result = json.loads((out / "methods" / "test_scale" / "result.json").read_text())
    assert len(result["cross_validation"]["per_fold"]) == 2
    assert "| SS held-out (CV) |" in (out / "results.md").read_text()


def test_the_table_shows_transfer_columns_only_when_a_row_has_them():
    from fairstamp.bench.table import markdown_table, row_of

    mv = {"value": 12.5, "ci_low": 0.0, "ci_high": 20.0, "n": 10}
    plain = row_of("original", {"crows": {"crows": {"overall": mv}}}, {})
    assert "BBQ" not in markdown_table([plain])
    metrics = {"crows": {"crows": {"overall": mv}},
               "transfer": {"bbq": {"bias_ambig": mv}, "bold": {"max_gap_gender": {
                   **mv, "value": 0.0421}}}}
    table = markdown_table([plain, row_of("fast", metrics, {})])
    header, _, ideal, first, second = table.splitlines()
    assert "| CrowS | BBQ s_AMB | BOLD gender gap | RS unseen |" in header
    assert "WinoBias" not in header and "| 50 | 0 | 0 |" in ideal
    assert "| 12.5 | 12.5 | 0.042 |" in second and "| 12.5 | – | – |" in first
