import json
import subprocess
import sys

import numpy as np
import pytest

from fairstamp.cli.main import main
from fairstamp.models import load
from fairstamp.scoring import Scorer

COMMANDS = ["demo", "debias", "bench", "eval", "generate", "trace", "compare", "models", "score"]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command, capsys):
    args = ["--help"] if command is None else [command, "--help"]
    code, out, _ = run(args, capsys)
    assert code == 0
    assert "Usage:" in out
    if command:
        assert "--model" in out or command in ("models", "compare")


def test_score_writes_jsonl_in_input_order_matching_the_scorer(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "in.jsonl"
    sentences = ["The chess player was asian.", "Hi.", "The mother was caring and kind."]
    src.write_text("".join(json.dumps({"id": i, "text": s}) + "\n"
                           for i, s in enumerate(sentences)))
    out_file = tmp_path / "scores.jsonl"
    code, _, _ = run(["score", str(src), "--model", str(tiny_model_dir), "-o", str(out_file)],
                     capsys)
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["text"] for r in rows] == sentences
    loaded = load(str(tiny_model_dir))
    expected = Scorer.from_loaded(loaded).score(sentences)
    np.testing.assert_allclose([r["logprob_sum"] for r in rows], expected.total, atol=1e-6)
    np.testing.assert_allclose([r["logprob_mean"] for r in rows], expected.mean, atol=1e-6)
    assert [r["n_tokens"] for r in rows] == list(expected.n_tokens)
    # an existing output file is refused unless told to overwrite
    code, _, err = run(["score", str(src), "--model", str(tiny_model_dir), "-o", str(out_file)],
                       capsys)
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["score", "{tmp}/absent.txt"], "absent.txt: no such file"),
        ("", ["score", "{tmp}/in.txt"], "in.txt: no sentences"),
        ('{"text": "a"}\n{oops}\n', ["score", "{tmp}/in.jsonl"], "in.jsonl:2: invalid JSON"),
        ("A.\n", ["score", "{tmp}/in.txt", "--model", "smolm2-135m"], "unknown model alias"),
        ("A.\n", ["score", "{tmp}/in.txt", "--model", "{tmp}/no/model/"], "no such model folder"),
        ("A.\n", ["score", "{tmp}/in.txt", "--model", "{tmp}/bloom"], "unsupported architecture"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, capsys, setup, args, message):
    if setup is not None:
        name = "in.jsonl" if "in.jsonl" in " ".join(args) else "in.txt"
        (tmp_path / name).write_text(setup)
    from transformers import BloomConfig

    BloomConfig(n_layer=1, hidden_size=16, n_head=2, vocab_size=50).save_pretrained(
        tmp_path / "bloom")
    code, _, err = run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_console_script_reads_stdin_and_exits_nonzero_on_errors(tiny_model_dir):
    exe = [sys.executable, "-m", "fairstamp.cli.main"]
    ok = subprocess.run([*exe, "-q", "score", "--model", str(tiny_model_dir)], input="One.\nTwo.\n",
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(line)["text"] for line in ok.stdout.splitlines()] == ["One.", "Two."]
    bad = subprocess.run([*exe, "score", "--model", str(tiny_model_dir)], input="",
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: <stdin>: no sentences (the file is empty)"


def test_models_lists_aliases_and_architectures(capsys, tmp_path):
    code, out, _ = run(["models", "--cache-dir", str(tmp_path)], capsys)
    assert code == 0
    for text in ("smollm2-135m", "gemma-3-270m", "GPT-NeoX", "Gemma 3", "no (converted",
                 "9, 1 (measured)", "two-thirds rule, 0"):
        assert text in out


@pytest.mark.slow
def test_demo_on_smollm2_shows_each_pair(capsys):
    code, out, _ = run(["demo"], capsys)
    assert code == 0
    assert "smollm2-135m" in out
    assert out.count("stereotype") >= 5 and "[Christians | Muslims]" in out
