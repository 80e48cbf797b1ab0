"""Suite parts found by name, the one reduction setting, and eval/trace run folders written by
the one run-folder writer (all or nothing)."""

import inspect
import json

import pytest

import fairstamp.cli.trace as trace_cli
import fairstamp.evaluation.run_folder as eval_folder
import fairstamp.reporting.trace_report as trace_report
from fairstamp.cli.evaluate import eval_command
from fairstamp.cli.main import main
from fairstamp.errors import FairstampError
from fairstamp.evaluation import registry
from fairstamp.evaluation.config import (
    DEFAULT_REDUCTION,
    REDUCTIONS,
    SUITE_PARTS,
    EvalConfig,
    check_reduction,
)
from fairstamp.evaluation.registry import SuitePart, get_part, part_names, register_part
from fairstamp.evaluation.run_folder import write_run
from fairstamp.evaluation.suite import Evaluation, evaluate
from fairstamp.models import load
from fairstamp.reporting import run_folder as run_folder_module
from fairstamp.scoring import Scorer

EXTRA = "The weather was mild in the valley."


class SentenceCount(SuitePart):
    """A part from outside the package: counts the CrowS-Pairs sentences and scores one of its
    own, in the suite's single scoring pass."""

    def load(self, context):
        context.record("extra", None, 1)

    def sentences(self, context):
        return [*(s for i in context.items["crows"] for s in (i.stereo, i.anti)), EXTRA]

    def run(self, context):
        context.metrics["sentence_count"] = {"n": len(context.scores),
                                             "extra": context.scores[EXTRA]}


@pytest.fixture
def parts(monkeypatch):
    """The registry and the suites, restored after the test."""
    monkeypatch.setattr(registry, "_PARTS", dict(registry._PARTS))
    for suite, names in SUITE_PARTS.items():
        monkeypatch.setitem(SUITE_PARTS, suite, names)
    return SUITE_PARTS


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_builtin_parts_are_registered_and_make_every_suite():
    assert part_names() == ["bbq", "bold", "crows", "edited", "general", "held_out",
                            "paraphrase", "retention", "stereoset", "winobias"]
    for names in SUITE_PARTS.values():
        assert all(get_part(name).name == name for name in names)


def test_a_part_registered_here_runs_inside_evaluate_in_the_one_scoring_pass(
        parts, tiny_model_dir, monkeypatch):
    register_part("sentence_count")(SentenceCount)
    parts["crows"] = ("crows", "sentence_count")
    calls = []
    score = Scorer.score

    def counting(self, sentences, **kw):
        calls.append(list(sentences))
        return score(self, sentences, **kw)

    monkeypatch.setattr(Scorer, "score", counting)
    loaded = load(str(tiny_model_dir))
    result = evaluate(loaded, EvalConfig(model="tiny", suite="crows", limit=8, n_resamples=10))
    assert list(result.metrics["metrics"]) == ["crows", "sentence_count"]
    assert list(result.metrics["data"]) == ["crows_pairs", "extra"]
    assert len(calls) == 1 and calls[0][-1] == EXTRA  # its sentences join the one pass, last
    n = result.metrics["scoring"]["sentences_scored"]
    assert n == len(calls[0]) == len(set(calls[0])) == 2 * 8 + 1
    assert result.metrics["metrics"]["sentence_count"]["n"] == n
    alone = Scorer.from_loaded(loaded).score([EXTRA]).mean[0]
    assert result.metrics["metrics"]["sentence_count"]["extra"] == pytest.approx(alone, abs=1e-5)


def test_unknown_parts_are_refused_with_the_known_ones(parts, tiny_model_dir):
    parts["crows"] = ("crows", "lambada")
    with pytest.raises(FairstampError, match="unknown suite part 'lambada'; known parts: "
                                             "bbq, bold, crows, edited, general, held_out"):
        evaluate(load(str(tiny_model_dir)), EvalConfig(model="tiny", suite="crows", limit=2))
    with pytest.raises(FairstampError, match="unknown suite part 'nope'"):
        get_part("nope")


def test_a_name_is_registered_once(parts):
    with pytest.raises(FairstampError, match="'crows' is already registered"):
        register_part("crows")(SentenceCount)
    with pytest.raises(FairstampError, match="not a SuitePart"):
        register_part("thing")(dict)


def test_reductions_are_defined_once_and_refused_as_user_errors(tiny_model_dir, capsys):
    assert REDUCTIONS == ("mean", "sum") and DEFAULT_REDUCTION == "mean"
    assert EvalConfig(model="m").reduction == DEFAULT_REDUCTION
    assert inspect.signature(eval_command).parameters["reduction"].default == DEFAULT_REDUCTION
    assert inspect.signature(trace_cli.trace_command).parameters["reduction"].default == (
        DEFAULT_REDUCTION)
    assert check_reduction("sum") == "sum"
    with pytest.raises(FairstampError, match="reduction must be one of mean, sum, got 'median'"):
        EvalConfig(model="m", reduction="median")
    with pytest.raises(FairstampError, match="unknown suite 'nope'"):
        EvalConfig(model="m", suite="nope")
    for command in ("eval", "trace"):
        code, _, err = run([command, "--model", str(tiny_model_dir), "--reduction", "median",
                            "--out", "unused"], capsys)
        assert code == 2 and "reduction must be one of mean, sum" in err


def _evaluation():
    metrics = {"model": {"name": "m"}, "metrics": {}, "data": {}, "versions": {},
               "config": {"suite": "crows", "seed": 0, "reduction": "mean", "n_resamples": 10},
               "timing": {"seconds": 1.0, "peak_rss_mib": 1.0}}
    return Evaluation(metrics=metrics, predictions={"retention": {"r1": True}})


@pytest.fixture
def spy(monkeypatch):
    """Records the folders written through `reporting.run_folder.run_folder`, as eval and
    trace import it."""
    written = []

    def spying(out, **kw):
        written.append(out)
        return run_folder_module.run_folder(out, **kw)

    monkeypatch.setattr(eval_folder, "run_folder", spying)
    monkeypatch.setattr(trace_cli, "run_folder", spying)
    return written


def test_write_run_goes_through_run_folder_all_or_nothing(tmp_path, spy, monkeypatch):
    out = tmp_path / "run"
    assert write_run(_evaluation(), out) == out
    assert spy == [out]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "plots", "predictions.json",
                                                     "report.md"]
    assert json.loads((out / "predictions.json").read_text()) == {"retention": {"r1": True}}
    with pytest.raises(FileExistsError, match="already exists"):
        write_run(_evaluation(), out)

    def broken(metrics, plots):
        raise RuntimeError("report failed")

    monkeypatch.setattr(eval_folder, "markdown_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        write_run(_evaluation(), tmp_path / "new")
    with pytest.raises(RuntimeError, match="report failed"):
        write_run(_evaluation(), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folder anywhere
    assert (out / "report.md").read_text().startswith("# fairstamp evaluation: `m`")


def test_trace_goes_through_run_folder_all_or_nothing(tmp_path, tiny_model_dir, spy, capsys,
                                                      monkeypatch):
    out = tmp_path / "trace"
    args = ["trace", "--model", str(tiny_model_dir), "--bias-types", "gender", "--limit", "1",
            "--samples", "1", "--components", "mlp", "--heatmap-items", "1", "--out", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert spy == [out]
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.md", "trace.json"]
    report = (out / "report.md").read_text()
    record = json.loads((out / "trace.json").read_text())
    item = record["item_ids"][0]
    heatmap = f"heatmap_mlp_{trace_report.file_part(item, 0)}.png"
    assert f"**mlp, {item}**\n\n![mlp {item}](plots/{heatmap})" in report
    assert (out / "plots" / heatmap).is_file()
    code, _, err = run(args, capsys)
    assert code == 2 and "already exists" in err

    def broken(*args, **kw):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(trace_report, "layer_profiles", broken)
    for attempt in ([*args[:-1], str(tmp_path / "other")], [*args, "--overwrite"]):
        code, _, err = run(attempt, capsys)
        assert code == 1
        assert "internal error in fairstamp trace: RuntimeError: plot failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace"]
    assert (out / "report.md").read_text() == report
