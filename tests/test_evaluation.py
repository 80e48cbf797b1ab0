"""`fairstamp eval` / `compare` end to end on a tiny local model and the real data sets."""

import json

import numpy as np
import pytest

from conftest import SHARED_DATA
from fairstamp.cli.main import main
from fairstamp.data.stereoset import load_stereoset
from fairstamp.metrics.stereoset_official import read_predictions
from fairstamp.models import load
from fairstamp.scoring import Scorer


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stereoset_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("runs")
    args = ["eval", "--model", str(tiny_model_dir), "--suite", "biascope", "--limit", "60",
            "--bootstrap", "50", "--data-dir", str(SHARED_DATA), "--out", str(out / "a"),
            "--export-stereoset-predictions", str(out / "pred.json")]
    assert main(args) == 0
    return out


def test_run_folder_holds_every_artefact(stereoset_run):
    folder = stereoset_run / "a"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "plots",
                                                        "predictions.json", "report.md"]
    assert sorted(p.name for p in (folder / "plots").iterdir()) == [
        "lms_vs_ss.png", "per_target_ss.png", "ss_by_bias_type.png"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["config"]["seed"] == 0 and metrics["config"]["limit"] == 60
    assert {"torch", "transformers", "numpy", "python", "machine"} <= set(metrics["versions"])
    assert metrics["versions"]["machine"].endswith(" threads")
    assert len(metrics["data"]["stereoset"]["sha256"]) == 64
    assert metrics["data"]["retention"]["n"] == 544
    for section in ("stereoset", "paraphrase", "held_out", "retention"):
        assert section in metrics["metrics"]
    assert metrics["metrics"]["stereoset"]["ss"]["overall"]["n"] == 60
    report = (folder / "report.md").read_text()
    assert "SS (StereoSet, micro)" in report and "plots/lms_vs_ss.png" in report


def test_metrics_agree_with_scores_computed_directly(stereoset_run, tiny_model_dir):
    """SS in metrics.json = % of the first 60 StereoSet items whose stereo sentence has the
    higher per-token mean log-prob under the same model, scored independently here."""
    items = load_stereoset(limit=60)
    scorer = Scorer.from_loaded(load(str(tiny_model_dir)))
    stereo = scorer.score([i.stereo for i in items]).mean
    anti = scorer.score([i.anti for i in items]).mean
    expected = 100.0 * np.mean(stereo > anti)
    metrics = json.loads((stereoset_run / "a" / "metrics.json").read_text())
    assert metrics["metrics"]["stereoset"]["ss"]["overall"]["value"] == pytest.approx(expected)
    exported = read_predictions(stereoset_run / "pred.json")
    assert len(exported) == 3 * 60
    by_id = {i.stereo_id: s for i, s in zip(items, stereo)}
    for sid, value in by_id.items():
        assert exported[sid] == pytest.approx(value, abs=1e-5)  # batching: float32 noise


def test_reference_run_gives_rs_100_for_the_same_model(stereoset_run, tiny_model_dir, capsys):
    out = stereoset_run / "b"
    code, stdout, _ = run(["eval", "--model", str(tiny_model_dir), "--suite", "biascope",
                           "--limit", "20", "--bootstrap", "20", "--reference",
                           str(stereoset_run / "a"), "--out", str(out)], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["retention"]["rs"]["overall"]["value"] == 100.0
    assert "RS (vs reference)" in stdout
    code, stdout, _ = run(["compare", str(stereoset_run / "a"), str(out), "--out",
                           str(stereoset_run / "cmp")], capsys)
    assert code == 0
    assert "DS (retention set)" in stdout and "+0.00" in stdout
    assert (stereoset_run / "cmp" / "ss_before_after.png").is_file()
    rows = json.loads((stereoset_run / "cmp" / "compare.json").read_text())
    ds = [r for r in rows if r["metric"] == "DS (retention set)" and r["column"] == "overall"]
    assert ds and ds[0]["delta"] == 0.0


def test_crows_suite(tmp_path, tiny_model_dir, capsys):
    code, stdout, _ = run(["eval", "--model", str(tiny_model_dir), "--suite", "crows",
                           "--bias-types", "race,religion", "--limit", "30", "--bootstrap", "20",
                           "--out", str(tmp_path / "c")], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    crows = metrics["metrics"]["crows"]["crows"]
    assert set(crows["by_type"]) <= {"race-color", "religion"}
    assert "CrowS-Pairs score" in stdout


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["--suite", "nope"], "--suite 'nope': choose one of biascope"),
        (None, ["--bias-types", "gender,colour"], "colour"),
        ('{"id": "r1", "bias_type": "gender", "group": "women", "true": "A.", "false": "A."}\n',
         ["--retention-file", "{file}"], "identical"),
        ('{"id": "b1", "source": "user", "bias_type": "gender", "target": "x", "stereo": "A b.",'
         ' "anti": "A c."}\n{"id": "b1"}\n', ["--bias-file", "{file}"], "b.jsonl:2:"),
    ],
)
def test_bad_input_leaves_no_run_folder(tmp_path, tiny_model_dir, capsys, content, args, message):
    file = tmp_path / "b.jsonl"
    if content is not None:
        file.write_text(content)
    out = tmp_path / "run"
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--limit", "5", "--out", str(out),
                        *[a.format(file=file) for a in args]], capsys)
    assert code == 2, err
    assert message in err.strip().splitlines()[-1]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["b.jsonl"] if content else [])


def test_existing_run_folder_is_refused(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "run").mkdir()
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run")],
                       capsys)
    assert code == 2 and "already exists" in err


def test_general_suite_on_tiny_model(tmp_path, tiny_model_dir, capsys):
    limits = "wikitext2=600,known_1000=30,boolq=5,copa=10,winogrande=10,piqa=10,arc_easy=10"
    code, stdout, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "general",
                             "--general-limits", limits, "--bootstrap", "20",
                             "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "g")], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    general = metrics["metrics"]["general"]
    assert general["perplexity"]["value"] > 1.0
    assert general["known_1000"]["accuracy"]["n"] == 30
    assert {t: general["downstream"][t]["n"] for t in general["downstream"]} == {
        "boolq": 5, "copa": 10, "winogrande": 10, "piqa": 10, "arc_easy": 10}
    predictions = json.loads((tmp_path / "g" / "predictions.json").read_text())
    assert len(predictions["known_1000_top1"]) == 30
    assert "WikiText-2 perplexity" in stdout
    assert "top-1 changed" not in (tmp_path / "g" / "report.md").read_text()
    # Against a reference whose top-1 differs on two facts: "kept" and the report list them.
    top1 = predictions["known_1000_top1"]
    flipped = sorted(top1)[:2]
    for known_id in flipped:
        top1[known_id] += 1
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "predictions.json").write_text(json.dumps(predictions))
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "general",
                        "--general-limits", limits, "--bootstrap", "20",
                        "--data-dir", str(SHARED_DATA), "--reference", str(tmp_path / "ref"),
                        "--out", str(tmp_path / "k")], capsys)
    assert code == 0, err
    known = json.loads((tmp_path / "k" / "metrics.json").read_text())["metrics"]["general"][
        "known_1000"]
    assert known["kept"]["value"] == pytest.approx(100 * 28 / 30)
    assert sorted(str(c["known_id"]) for c in known["changed"]) == flipped
    report = (tmp_path / "k" / "report.md").read_text()
    assert "2 fact(s) changed their top-1 next token" in report
    assert all(f"| {c['known_id']} | {c['prompt']} |" in report for c in known["changed"])
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "general",
                        "--general-limits", "boolq=many", "--out", str(tmp_path / "h")], capsys)
    assert code == 2 and "--general-limits" in err and not (tmp_path / "h").exists()


def test_a_data_dir_that_does_not_exist_is_refused(tmp_path, tiny_model_dir, capsys):
    code, _, err = run(["eval", "--model", str(tiny_model_dir), "--suite", "general",
                        "--data-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "g")],
                       capsys)
    assert code == 2 and f"--data-dir {tmp_path / 'typo'}: no such folder" in err
    assert not (tmp_path / "g").exists()
