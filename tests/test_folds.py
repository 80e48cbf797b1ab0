"""Cross-validation by target (`--folds K`): every target held out exactly once, the folds share
every bias type, the model comes back unchanged, and the pooled "before" is the original's SS on
the same items."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from conftest import SHARED_DATA
from fairstamp.data.stereoset import load_stereoset
from fairstamp.errors import DataError, FairstampError
from fairstamp.methods import get_method
from fairstamp.runs.folds import cross_validate, target_folds
from test_fast import run_cli, tiny
from test_methods_finetune import FT_QUICK, context
from test_stamp import logits


@pytest.fixture(scope="module")
def items():
    return [*load_stereoset(bias_types=["gender"]), *load_stereoset(bias_types=["religion"])]


def test_each_target_is_held_out_once_and_every_fold_has_every_bias_type(items):
    folds = target_folds(items, 3, seed=0)
    fold_of_target = {}
    for item, fold in zip(items, folds):
        assert fold_of_target.setdefault((item.bias_type, item.target), fold) == fold
    per_type = Counter((bt, f) for (bt, _), f in fold_of_target.items())
    assert {f for _, f in per_type} == {0, 1, 2}
    assert {bt for bt, _ in per_type} == {"gender", "religion"}
    assert all(per_type[("religion", f)] == 1 for f in range(3))  # 3 targets → one per fold
    gender = [per_type[("gender", f)] for f in range(3)]
    assert sorted(gender) == [3, 3, 4]  # 10 targets dealt round-robin
    assert target_folds(items, 3, seed=0) == folds
    assert target_folds(list(reversed(items)), 3, seed=0) == list(reversed(folds))
    assert target_folds(items, 3, seed=1) != folds


def test_too_few_targets_or_folds_are_refused(items):
    with pytest.raises(DataError, match="religion has 3 targets, fewer than 4 folds"):
        target_folds(items, 4)
    with pytest.raises(FairstampError, match="at least 2 folds"):
        target_folds(items, 1)


def test_cross_validation_restores_the_model_and_pools_every_item(tiny_tokenizer):
    items = load_stereoset(bias_types=["gender"], limit=60)
    loaded = tiny(tiny_tokenizer)
    original = logits(loaded.model)
    cv = cross_validate(loaded, items, lambda edit: context(loaded, edit),
                        get_method("ft", **FT_QUICK).fit, folds=2, n_resamples=10)
    assert torch.equal(logits(loaded.model), original)
    assert cv["before"]["ss"]["overall"]["n"] == cv["after"]["ss"]["overall"]["n"] == len(items)
    held = [set(r["held_out_targets"]) for r in cv["per_fold"]]
    assert not held[0] & held[1]
    assert held[0] | held[1] == {f"gender:{i.target}" for i in items}
    assert all(r["n_edit"] + r["n_held_out"] == len(items) for r in cv["per_fold"])
    assert "lms" in cv["after"]
    # The change is after − before on the same items, its CI from paired resamples.
    change = cv["change"]["ss"]["overall"]
    assert change["value"] == pytest.approx(cv["after"]["ss"]["overall"]["value"]
                                            - cv["before"]["ss"]["overall"]["value"])
    assert change["ci_low"] <= change["value"] <= change["ci_high"]


def test_a_monitored_cross_validation_records_each_folds_held_out_curve(tiny_tokenizer):
    items = load_stereoset(bias_types=["gender"], limit=60)
    loaded = tiny(tiny_tokenizer)
    fit = get_method("ft", **FT_QUICK).fit
    plain = cross_validate(loaded, items, lambda edit: context(loaded, edit), fit, folds=2,
                           n_resamples=10)
    seen = []

    def watched(ctx):
        seen.append(ctx.monitor_items)
        return fit(ctx)

    cv = cross_validate(loaded, items, lambda edit: context(loaded, edit), watched, folds=2,
                        n_resamples=10, monitor=True)
    assert cv["after"] == plain["after"]  # recording changes no number
    for record, monitored in zip(cv["per_fold"], seen):
        assert sorted({f"gender:{i.target}" for i in monitored}) == record["held_out_targets"]
        checks = record["edit"]["checks"]
        assert [c["step"] for c in checks] == [4, 8, 12]
        kept = next(c for c in checks if c["step"] == record["edit"]["kept_step"])
        # The kept check's monitored SS is the fold's held-out SS, scored as eval scores it.
        assert kept["monitor_ss"] == pytest.approx(record["held_out_ss"])
    assert all("monitor_ss" not in c for r in plain["per_fold"] for c in r["edit"]["checks"])
    # Each fold records the original model's SS on its held-out items, which pool to "before".
    assert sum(r["held_out_ss_before"] * r["n_held_out"] for r in cv["per_fold"]) / len(
        items) == pytest.approx(cv["before"]["ss"]["overall"]["value"])


def test_a_resumed_cross_validation_reuses_finished_folds_and_gives_the_same_numbers(
        tiny_tokenizer):
    items = load_stereoset(bias_types=["gender"], limit=60)
    loaded = tiny(tiny_tokenizer)
    fit = get_method("ft", **FT_QUICK).fit
    stored = {}
    whole = cross_validate(loaded, items, lambda edit: context(loaded, edit), fit, folds=2,
                           n_resamples=10, on_fold=stored.__setitem__)
    assert sorted(stored) == [0, 1]
    fits = []

    def counted(ctx):
        fits.append(ctx)
        return fit(ctx)

    # Fold 1 finished in an "earlier run": only fold 2 is fitted, and the numbers are the same.
    resumed = cross_validate(loaded, items, lambda edit: context(loaded, edit), counted, folds=2,
                             n_resamples=10, finished=lambda fold: stored.get(fold) if fold == 0
                             else None)
    assert len(fits) == 1
    assert resumed["after"] == whole["after"] and resumed["change"] == whole["change"]
    assert resumed["per_fold"][0] == whole["per_fold"][0]
    # A stored fold from another split is refused, not silently mixed in.
    with pytest.raises(FairstampError, match="stored fold held out"):
        cross_validate(loaded, items, lambda edit: context(loaded, edit), fit, folds=2,
                       n_resamples=10, finished=lambda fold: stored[1 - fold])


def test_the_paired_change_of_ss_has_a_narrower_ci_than_either_ss():
    from fairstamp.metrics.bias import stereotype_score, stereotype_score_change

    items = load_stereoset(bias_types=["gender"], limit=80)
    before = {s: 0.0 for i in items for s in (i.stereo, i.anti)}
    for n, i in enumerate(items):
        before[i.stereo] = 1.0 if n % 10 else -1.0  # 90% stereotyped
    after = dict(before)
    for i in items[1::20]:
        after[i.stereo] = -1.0  # 4 of them no longer: the same items, mostly unchanged
    change = stereotype_score_change(items, before, after, n_resamples=300).overall
    assert change.value == pytest.approx(-5.0)
    ss_after = stereotype_score(items, after, n_resamples=300).overall
    assert change.ci_high - change.ci_low < 0.8 * (ss_after.ci_high - ss_after.ci_low)
    assert stereotype_score_change(items, before, before, n_resamples=50).overall.value == 0.0


def test_debias_with_folds_reports_cross_validated_held_out_ss(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(["debias", "--model", tiny_model_dir, "--data-dir", SHARED_DATA,
                    "--bias-types", "gender", "--limit", "60", "--layer", "1",
                    "--suite", "stereoset", "--max-steps", "3", "--width", "8",
                    "--bootstrap", "10", "--folds", "2", "--out", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cv = metrics["cross_validation"]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    # "before" is the original model on every item: the first evaluation's SS, exactly.
    assert cv["before"]["ss"]["overall"]["value"] == \
        metrics["before"]["metrics"]["stereoset"]["ss"]["overall"]["value"]
    report = (out / "report.md").read_text()
    assert "## Cross-validation by target (2 folds)" in report
    assert (out / "plots" / "cross_validated_ss.png").is_file()
    assert "cross_validation" in metrics["timing"]
    # Each fold's held-out items are scored at every check: a learning curve per fold, plotted.
    for record in cv["per_fold"]:
        kept = next(c for c in record["edit"]["checks"] if c["step"] == record["edit"]["kept_step"])
        assert kept["monitor_ss"] == pytest.approx(record["held_out_ss"])
        assert f"| {record['held_out_ss']:.1f} | {record['edit']['kept_step']} |" in report
    assert (out / "plots" / "cross_validated_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/cross_validated_curves.png" in report


def test_the_generalisation_benchmark_writes_its_table(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "generalisation.py"
    run = subprocess.run(
        [sys.executable, str(script), "--model", str(tiny_model_dir), "--folds", "2",
         "--max-steps", "2", "--recipe", "attribute=width=8", "--recipe",
         "both=pairs=both,width=8,layer=0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FAIRSTAMP_DATA": str(SHARED_DATA)})
    assert run.returncode == 0, run.stderr[-2000:]
    tables = list(tmp_path.glob("generalisation-*.md"))
    assert len(tables) == 1
    text = tables[0].read_text()
    assert "| attribute | max_steps=2, width=8 |" in text and "| both |" in text
    plot = tables[0].with_suffix(".png")
    assert f"![trade-off]({plot.name})" in text and plot.read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(tables[0].with_suffix(".json").read_text())
    assert rows["both"]["cross_validation"]["before"] == rows["attribute"]["cross_validation"][
        "before"]
    # Each row's folds' held-out distance from 50, weighted by their items, before → after.
    per_fold = rows["attribute"]["cross_validation"]["per_fold"]
    n = sum(f["n_held_out"] for f in per_fold)
    before, after = (sum(f["n_held_out"] * abs(f[key] - 50) for f in per_fold) / n
                     for key in ("held_out_ss_before", "held_out_ss"))
    assert "| fold distance from 50 |" in text
    assert f"% | {before:.1f} → {after:.1f} | " in text.split("| attribute |")[1].splitlines()[0]
    # `layer=N` places that recipe's stamps; the others keep the two-thirds rule's (2 of 3).
    assert [f["edit"]["layer"] for r in ("attribute", "both")
            for f in rows[r]["cross_validation"]["per_fold"]] == [2, 2, 0, 0]
    assert (rows["attribute"]["layer"], rows["both"]["layer"]) == (2, 0)
    assert rows["both"]["options"]["layer"] == "0" and "layer" not in rows["both"]["fit"]
    # No stored fold is left once a recipe's JSON is written.
    cache = tmp_path / tables[0].stem
    assert sorted(p.name for p in cache.iterdir()) == ["attribute.json", "both.json"]
    # Once every recipe is finished the model is not loaded: the same command with a model
    # folder that no longer exists rebuilds the same table from the JSON.
    first_table, gone = text, tmp_path / "gone" / tiny_model_dir.name
    tables[0].unlink()
    rebuilt = subprocess.run(
        [sys.executable, str(script), "--model", str(gone),
         "--folds", "2", "--max-steps", "2", "--recipe", "attribute=width=8", "--recipe",
         "both=pairs=both,width=8,layer=0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FAIRSTAMP_DATA": str(SHARED_DATA)})
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert tables[0].read_text() == first_table.replace(str(tiny_model_dir), str(gone))
    # A second seed is a second file, and its stamps are not the first seed's.
    again = subprocess.run(
        [sys.executable, str(script), "--model", str(tiny_model_dir), "--folds", "2",
         "--max-steps", "2", "--seed", "1", "--recipe", "attribute=width=8", "--monitor",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FAIRSTAMP_DATA": str(SHARED_DATA)})
    assert again.returncode == 0, again.stderr[-2000:]
    seeded = json.loads(tables[0].with_name(tables[0].stem + "-seed1.json").read_text())
    assert (seeded["attribute"]["seed"], rows["attribute"]["seed"]) == (1, 0)
    # The recorded fit config is the one the stamps used: its seed is the run's.
    assert (seeded["attribute"]["fit"].pop("seed"), rows["attribute"]["fit"].pop("seed")) == (1, 0)
    assert seeded["attribute"]["fit"] == rows["attribute"]["fit"]
    assert seeded["attribute"]["cross_validation"]["after"] != rows["attribute"][
        "cross_validation"]["after"]
    # --monitor records each fold's held-out curve, which kept_check.py reads: the rule the run
    # kept by gives back its pooled held-out SS; an unmonitored run is refused.
    kept = subprocess.run(
        [sys.executable, str(script.with_name("kept_check.py")),
         str(tables[0].with_name(tables[0].stem + "-seed1.json")), "--recipe", "attribute",
         "--out", str(tmp_path / "kept")], capture_output=True, text=True, timeout=600)
    assert kept.returncode == 0, kept.stderr[-2000:]
    rules = json.loads((tmp_path / "kept.json").read_text())["rules"]
    assert rules["as_run"]["mean_ss"] == pytest.approx(
        seeded["attribute"]["cross_validation"]["after"]["ss"]["overall"]["value"])
    assert "| as_run |" in (tmp_path / "kept.md").read_text()
    # The recorded command rewrites these files, not the default ones: its options are in it.
    assert f"-seed1.json --recipe attribute --out {tmp_path / 'kept'}`" in (
        tmp_path / "kept.md").read_text()
    unmonitored = subprocess.run(
        [sys.executable, str(script.with_name("kept_check.py")),
         str(tables[0].with_suffix(".json")), "--recipe", "attribute", "--out",
         str(tmp_path / "unmonitored")], capture_output=True, text=True, timeout=600)
    assert unmonitored.returncode != 0 and "no monitored checks" in unmonitored.stderr
    # A recipe cannot set the seed (FAST takes the run's): refused before any model work.
    refused = subprocess.run(
        [sys.executable, str(script), "--model", str(tmp_path / "no-model"),
         "--recipe", "s1=seed=1", "--out", str(tmp_path / "refused")],
        capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--recipe s1: fast.seed: the seed is the run's" in \
        refused.stderr
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_the_cost_curves_benchmark_writes_its_tables_and_plot(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "cost_curves.py"
    run = subprocess.run(
        [sys.executable, str(script), "--models", str(tiny_model_dir), "--sizes", "25,100",
         "--steps", "2", "--eval-every", "50", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "FAIRSTAMP_DATA": str(SHARED_DATA)})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "cost_curves.json").read_text())
    ways = result["evaluation"]["ways"]
    assert ways["two processes, 1 thread each"]["processes"] == 2
    assert result["evaluation"]["max_abs_difference_2_vs_1_processes"] <= 1e-6
    assert [row["items"] for row in result["items"]] == [25, 100]
    for row in result["items"]:
        assert row["steps"] == 2 and row["tokens_per_step"] > 0
        assert row["phases"]["edit"]["peak_rss_gib"] > 0
    assert set(result["models"][0]["phases"]) == {"load", "evaluate", "trace", "edit"}
    text = (tmp_path / "cost_curves.md").read_text()
    assert "| 100 | gender, race, religion |" in text
    assert (tmp_path / "cost_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_kept_check_rule_for_a_shorter_run_reads_only_curves_that_go_beyond_it():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "kept_check.py"
    spec = importlib.util.spec_from_file_location("kept_check", path)
    kept_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kept_check)

    def curve(last: int) -> list[dict]:  # SS falling to 50 at step 100, gaps always falling
        return [{"step": s, "ss": max(50.0, 70.0 - s / 5), "bias_loss_all": 1.0 / s,
                 "monitor_ss": 60.0} for s in range(5, last + 1, 5)]

    rule = kept_check.keep_best(n=5, max_steps=60, stop=False)
    # A 120-step curve: the 60-step run keeps its nearest check to 50 among the first 60 steps.
    assert rule(curve(120))["step"] == 60
    # A curve that ends at 60 is the unlimited rule's own row, not a second copy of it.
    assert rule(curve(60)) is None
    assert kept_check.keep_best(n=5, stop=False)(curve(60))["step"] == 60


def test_the_recipe_summary_pools_a_recipes_seeds_and_names_patched_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    def record(recipe: str, seed: int, after: float, lms_after: float, fit: bool = True,
               layer: int = 20) -> dict:
        def side(ss: float, lms: float) -> dict:
            return {"ss": {"overall": {"value": ss}}, "lms": {"overall": {"value": lms}}}
        return {"recipe": recipe, "options": {"max_steps": "60"}, "seed": seed, "layer": layer,
                **({"fit": {"seed": seed, "counterfactual_weight": None,
                            "retention_weight": 3.0}} if fit else {}),
                "cross_validation": {"before": side(60.0, 92.0), "after": side(after, lms_after),
                                     "per_fold": [{"fit_seconds": 100.0 * (seed + 1),
                                                   "n_held_out": 10, "held_out_ss": after}]}}

    def put(folder: str, row: dict) -> None:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{row['recipe']}.json").write_text(json.dumps(row))

    put("generalisation-m-gender-cv5", record("d60", 0, 54.0, 90.0))
    put("generalisation-m-gender-cv5-seed1", record("d60", 1, 58.0, 91.0))
    put("generalisation-m-gender-cv5-seed1", record("old", 1, 59.0, 92.0, fit=False))
    put("generalisation-m-gender-cv5-twostamps", record("l16p20", 0, 57.0, 91.5))
    # The same name after the default layer changed: another recipe.
    put("generalisation-m-gender-cv5-seed2", record("d60", 2, 61.0, 92.0, layer=12))
    put("generalisation-m-gender-cv50", record("elsewhere", 0, 50.0, 92.0))  # 50 folds
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "recipe_summary.py"
    run = subprocess.run([sys.executable, str(script), "--model", "m", "--results",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    text = (tmp_path / "recipes-m-gender-cv5.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    # Two seeds of d60 are one row: their mean SS 56.0 (40% of the way from 60), fold distance
    # 6.0, LMS lost 1.5, fit time 150 s; rows sorted by the mean SS's distance from 50.
    assert rows[1] == ("| d60 | max_steps=60 | 20 | δ = 3 (auto), α = 3, λ = 0 | 0, 1 | 54.0, "
                       "58.0 | 56.0 | 40% | 6.0 | 1.5 | 150 |")
    assert rows[2].startswith("| l16p20 (twostamps) | max_steps=60 | 20 | δ = 3 (auto), α = 3, "
                              "λ = 0 | 0 | 57.0 |")
    # A row from before recipes were recorded: the defaults of then under its options.
    assert rows[3].startswith("| old | max_steps=60 | 20 | δ = 0, α = 1, λ = 0 | 1 | 59.0 | "
                              "59.0 | 10% |")
    assert rows[4].startswith("| d60 | max_steps=60 | 12 | δ = 3 (auto), α = 3, λ = 0 | 2 | "
                              "61.0 | 61.0 | -10% |")
    assert len(rows) == 5 and "elsewhere" not in text
    # Every row is a point of the plot: a name run again gets its layer and weights (and its
    # options where only they differ), and replaces no other row's point.
    sys.path.insert(0, str(script.parent))
    try:
        from recipe_summary import plot_points
    finally:
        sys.path.remove(str(script.parent))
    summary = {"ss": [55.0], "ss_mean": 55.0, "lms_drop": 1.0, "layer": 20,
               "weights": "δ = 3 (auto), α = 3, λ = 0", "options": "max_steps=60"}
    again = {**summary, "weights": "δ = 10, α = 3, λ = 0"}
    points = plot_points([{"name": "d60", **summary}, {"name": "d60", **summary, "layer": 12},
                          {"name": "d60", **again}, {"name": "d60", **again, "options": "x=1"},
                          {"name": "d60", **summary, "lms_drop": None}])
    assert list(points) == ["d60", "d60 (layer 12; δ = 3 (auto), α = 3, λ = 0)",
                            "d60 (layer 20; δ = 10, α = 3, λ = 0)",
                            "d60 (layer 20; δ = 10, α = 3, λ = 0; x=1)"]
    assert (tmp_path / "recipes-m-gender-cv5.png").read_bytes()[:4] == b"\x89PNG"
    missing = subprocess.run([sys.executable, str(script), "--model", "none", "--results",
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no records under" in missing.stderr
