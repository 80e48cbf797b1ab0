"""Misuse gets a clear, early, one-line error and an honest exit status; nothing is lost or left
behind (issue 20). Tiny models only; the out-of-memory case runs with a 10 MB record."""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, build_tiny_model
from fairstamp.bench.runner import BenchConfig, run_bench
from fairstamp.cli import validate as V
from fairstamp.cli.main import main
from fairstamp.data.bias_file import load_bias_file
from fairstamp.data.readers import read_sentences
from fairstamp.data.stereoset import load_stereoset
from fairstamp.data.validate import max_text_chars, sentence_length_limit
from fairstamp.errors import DataError, FairstampError
from fairstamp.models.archspec import arch_spec_for
from fairstamp.models.loader import LoadedModel
from fairstamp.stamp import Stamp, new_stamp
from fairstamp.utils.io import OutputClaimedError, claim_output, staging_dir

EXE = [sys.executable, "-m", "fairstamp.cli.main"]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def item(i: int, stereo: str | None = None, target: str = "mother") -> dict:
    return {"id": f"i{i}", "source": "user", "bias_type": "gender", "target": target,
            "stereo": stereo or f"The {target} was caring.", "anti": f"The {target} was cold."}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def no_model_work(monkeypatch):
    """Any attempt to load a model fails the test: the check must come before it."""
    import fairstamp.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(fairstamp.models, "load", refuse)


# -- exit statuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["debias"],                                   # missing --out
    ["debias", "--out", "x", "--bogus"],          # unknown option
    ["debias", "--out", "x", "--limit", "0"],
    ["trace", "--out", "x", "--limit", "abc"],
    ["debias", "--out", "x", "--max-steps", "-5"],
    ["nosuchcommand"],
])
def test_usage_errors_exit_2_without_a_traceback(args, capsys, tmp_path):
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and "Error:" in err
    assert not (Path("x").exists())


def test_an_internal_error_is_one_line_and_exit_1_with_the_traceback_behind_debug(
        tmp_path, capsys, monkeypatch):
    import fairstamp.cli.score as score_cli

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(score_cli, "read_sentences", broken)
    (tmp_path / "in.txt").write_text("A.\n")
    code, _, err = run(["score", tmp_path / "in.txt", "-o", tmp_path / "s.jsonl"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "internal error in fairstamp score: RuntimeError: boom (a bug in fairstamp; run again "
        "with `fairstamp --debug ...` for the traceback)"]
    code, _, err = run(["--debug", "score", tmp_path / "in.txt", "-o", tmp_path / "s.jsonl"],
                       capsys)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no output, no lock


def test_ctrl_c_exits_130_says_what_was_interrupted_and_writes_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "scores.jsonl"
    # `score` reading stdin waits for input: interrupt it there, once it has claimed its output.
    # A background job of a non-interactive shell (`make test &`) inherits SIGINT ignored, and
    # Python then keeps it ignored: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([*EXE, "score", "--model", str(tiny_model_dir), "-o", str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / ".scores.jsonl.claim"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert lock.exists(), proc.stderr.read() if proc.poll() is not None else "no claim"
    # stdin stays open until the process has ended: closing it would end the input instead.
    for _ in range(3):  # a signal that lands inside a C call is acted on when it returns
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("interrupted: fairstamp score stopped before it "
                                            "finished; nothing was written")
    assert list(tmp_path.iterdir()) == []


# -- early validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--out", "/proc/fairstamp-x"], "--out /proc/fairstamp-x: cannot write there"),
    (["--reads", "banana"], "--reads 'banana': choose one of mlp_output, mlp_input"),
    (["--lr", "-1"], "--lr -1.0: must be a positive number"),
    (["--weight-decay", "-1"], "--weight-decay -1.0: must be a number >= 0"),
    (["--suite", "everything"], "--suite 'everything': choose one of"),
    (["--data", "{tmp}/absent.jsonl"], "--data {tmp}/absent.jsonl: no such file"),
    (["--data-dir", "{tmp}/absent"], "--data-dir {tmp}/absent: no such folder"),
    (["--device", "warp:0"], "--device 'warp:0': not a torch device"),
    (["--layer", "999"], "--layer 999 is out of range: {model} has 3 layers (0-2)"),
    (["--counterfactual-weight", "3", "--data-dir", "{tmp}"],
     "counterfactual_weight > 0 swaps group words, read from "
     "{tmp}/bias_bench/bias_attribute_words.json, which is missing"),
    (["--pairs", "subject", "--bias-types", "profession"],
     "pairs='subject' swaps group words, which exist for gender, race, religion only"),
    (["--bias-types", "race", "--counterfactual-types", "gender"],
     "counterfactual_types=gender draws L_c's prefix pairs from edited items of gender, and "
     "the edit is of race"),
    (["--bias-types", "race", "--counterfactual-types", "gender", "--counterfactual-weight",
      "3"], "and the edit is of race: list a bias type it edits"),
])
def test_debias_refuses_bad_options_before_any_model_work(args, message, tmp_path, capsys,
                                                          tiny_model_dir, no_model_work):
    fill = {"tmp": tmp_path, "model": tiny_model_dir}
    args = [a.format(**fill) for a in args]
    base = ["debias", "--model", tiny_model_dir]
    if "--out" not in args:
        base += ["--out", tmp_path / "run"]
    clock = time.perf_counter()
    code, _, err = run([*base, *args], capsys)
    assert code == 2, err
    assert time.perf_counter() - clock < 10
    lines = error_lines(err)
    assert len(lines) == 1 and message.format(**fill) in lines[0], err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_a_device_without_cuda_is_refused(tmp_path, capsys, tiny_model_dir, no_model_work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(["trace", "--model", tiny_model_dir, "--device", "cuda", "--out",
                        tmp_path / "t"], capsys)
    assert code == 2
    assert error_lines(err) == ["error: --device cuda: CUDA is not available on this machine "
                                "(this torch has no CUDA support); use --device cpu"] or \
        "CUDA is not available" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "middle"], "--split 'middle': choose one of edit, held_out, all"),
    (["--components", "mlp,foo"], "--components: unknown 'foo' (choose from mlp, attn, resid)"),
    (["--reduction", "max"], "--reduction"),
])
def test_trace_refuses_bad_options_before_any_model_work(args, message, tmp_path, capsys,
                                                         tiny_model_dir, no_model_work):
    code, _, err = run(["trace", "--model", tiny_model_dir, *args, "--out", tmp_path / "t"],
                       capsys)
    assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_trace_components_are_the_tracers():
    from fairstamp.cli.trace import COMPONENTS
    from fairstamp.tracing import COMPONENTS as TRACED

    assert tuple(COMPONENTS) == tuple(TRACED)


def test_model_folders_that_cannot_be_read_are_one_line(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "in.txt").write_text("A.\n")
    no_type = tmp_path / "no-type"
    no_type.mkdir()
    (no_type / "config.json").write_text(json.dumps({"hidden_size": 8}))
    code, _, err = run(["score", tmp_path / "in.txt", "--model", no_type], capsys)
    assert code == 2 and "names no model_type" in error_lines(err)[0], err
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in os.listdir(tiny_model_dir):
        (junk / name).write_bytes((tiny_model_dir / name).read_bytes())
    (junk / "model.safetensors").write_bytes(b"\x00" * 100)
    code, _, err = run(["score", tmp_path / "in.txt", "--model", junk], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"{junk}: cannot load the model" in error_lines(err)[0] or \
        "cannot load weights" in error_lines(err)[0]


def test_unused_files_are_named(caplog):
    with caplog.at_level(logging.WARNING):
        unused = V.warn_unused_files({"--crows-file": "c.csv", "--retention-file": "r.jsonl",
                                      "--bias-file": None}, read={"--retention-file"},
                                     why="the suite has no CrowS-Pairs part")
    assert unused == ["--crows-file"]
    assert "--crows-file c.csv is not read: the suite has no CrowS-Pairs part" in caplog.text


def test_eval_checks_its_files_and_output_before_any_model_work(tmp_path, capsys,
                                                                  tiny_model_dir, no_model_work):
    base = ["eval", "--model", tiny_model_dir, "--out"]
    code, _, err = run([*base, tmp_path / "a", "--crows-file", tmp_path / "nope.csv"], capsys)
    assert code == 2 and "--crows-file" in err and "no such file" in err
    code, _, err = run([*base, "/proc/x/run"], capsys)
    assert code == 2 and "cannot write there" in err
    (tmp_path / "done").mkdir()
    code, _, err = run([*base, tmp_path / "done"], capsys)
    assert code == 2 and "already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]


def test_eval_names_a_given_file_its_suite_does_not_read(tmp_path, capsys, tiny_model_dir):
    crows = tmp_path / "c.csv"
    crows.write_text("not read\n")
    code, _, err = run(["eval", "--model", tiny_model_dir, "--suite", "stereoset", "--limit",
                        "2", "--bootstrap", "0", "--crows-file", crows, "--out", tmp_path / "run"],
                       capsys)
    assert code == 0, err
    assert "is not read: suite stereoset does not read it" in " ".join(err.split()), err


# -- run folders --------------------------------------------------------------------------------

def test_a_second_run_on_a_claimed_output_is_refused_at_once(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "trace"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fairstamp.utils.io import claim_output\n"
         f"with claim_output({str(out)!r}):\n    print('held', flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        clock = time.perf_counter()
        code, _, err = run(["trace", "--model", tiny_model_dir, "--out", out], capsys)
        assert code == 2 and time.perf_counter() - clock < 10
        assert "is being written by another run" in error_lines(err)[0], err
        with pytest.raises(OutputClaimedError), staging_dir(out):
            pass
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    assert list(tmp_path.iterdir()) == []  # the holder wrote nothing and removed its lock


def test_claims_are_reentrant_and_refuse_an_existing_output(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with claim_output(out):
        assert (tmp_path / "a" / "b" / ".run.claim").is_file()
        with staging_dir(out) as stage:  # the same process: its own claim
            (stage / "x").write_text("1")
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
    with pytest.raises(FileExistsError), claim_output(out):
        pass
    # a run that fails removes the parents it created
    with pytest.raises(RuntimeError), claim_output(tmp_path / "new" / "deep" / "run"):
        raise RuntimeError
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("old_kind", ["file", "folder"])
def test_overwrite_replaces_a_file_or_folder_and_leaves_nothing_behind(tmp_path, old_kind):
    out = tmp_path / "run"
    if old_kind == "file":
        out.write_text("old")
    else:
        out.mkdir()
        (out / "old.txt").write_text("old")
    with staging_dir(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), staging_dir(out, overwrite=True) as stage:
        (stage / "newer.txt").write_text("x")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_score_overwrites_its_output_file_without_leftovers(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "in.txt").write_text("One.\n")
    out = tmp_path / "s.jsonl"
    out.write_text("old\n")
    code, _, err = run(["score", tmp_path / "in.txt", "--model", tiny_model_dir, "-o", out,
                        "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["text"] == "One."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "s.jsonl"]


# -- stamp loading ------------------------------------------------------------------------------

def tiny_loaded(tokenizer=None) -> LoadedModel:
    model = build_tiny_model("llama")
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch_spec_for(model),
                       name="tiny-llama", source="local", path="-")


@pytest.fixture
def saved_stamp(tmp_path):
    loaded = tiny_loaded()
    folder = tmp_path / "stamp"
    new_stamp(loaded, 1, width=4).save_pretrained(folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "stamp_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _header(folder: Path) -> tuple[int, dict]:
    data = (folder / "stamp.safetensors").read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return size, json.loads(data[8:8 + size])


def _rewrite_header(folder: Path, header: dict) -> None:
    path = folder / "stamp.safetensors"
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])


def _break(folder: Path, case: str) -> None:
    weights = folder / "stamp.safetensors"
    if case == "empty":
        weights.write_bytes(b"")
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[:-20])
    elif case == "not safetensors":
        weights.write_bytes(b"PK\x03\x04 this is a zip file, not tensors")
    elif case == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
    elif case == "int dtype":
        _, header = _header(folder)
        header["up.bias"]["dtype"] = "I32"
        _rewrite_header(folder, header)
    elif case == "layer is text":
        _edit_config(folder, layer="two")
    elif case == "hidden mismatch":
        _edit_config(folder, hidden=64)
    elif case == "width mismatch":
        _edit_config(folder, width=5)
    elif case == "negative width":
        _edit_config(folder, width=-1)
    elif case == "unknown activation":
        _edit_config(folder, activation="swish")
    elif case == "config is a list":
        (folder / "stamp_config.json").write_text("[1, 2]")
    elif case == "layer beyond the model":
        _edit_config(folder, layer=7)


@pytest.mark.parametrize(("case", "message"), [
    ("empty", "stamp.safetensors: empty (0 bytes; not a safetensors file)"),
    ("truncated", "stamp.safetensors: truncated"),
    ("not safetensors", "stamp.safetensors: not a safetensors file"),
    ("flipped byte", "its sha256 differs from the one recorded in stamp_config.json"),
    ("int dtype", "tensor up.bias has dtype I32"),
    ("layer is text", "field 'layer' is \"two\", expected a layer number"),
    ("hidden mismatch", "tensor up.weight has shape [4, 32], but the config's hidden 64 and "
                        "width 4 make it [4, 64]"),
    ("width mismatch", "tensor up.weight has shape [4, 32], but the config's hidden 32 and "
                       "width 5 make it [5, 32]"),
    ("negative width", "field 'width' is -1, expected an integer from 1"),
    ("unknown activation", "field 'activation' is \"swish\", expected one of gelu"),
    ("config is a list", "stamp_config.json: expected a JSON object, got list"),
    ("layer beyond the model", "this stamp sits at layer 7; tiny-llama has 3 layers (0-2)"),
])
def test_broken_stamps_are_refused_in_one_line_before_anything_is_attached(saved_stamp, case,
                                                                           message):
    from fairstamp.stamp import stamps_of

    _break(saved_stamp, case)
    loaded = tiny_loaded()
    with pytest.raises(FairstampError) as info:
        Stamp.from_pretrained(saved_stamp, loaded)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert stamps_of(loaded.model, loaded.arch) == []


def test_the_weights_checksum_is_recorded_and_older_stamps_load_with_a_note(saved_stamp,
                                                                            caplog):
    import hashlib

    config = json.loads((saved_stamp / "stamp_config.json").read_text())
    data = (saved_stamp / "stamp.safetensors").read_bytes()
    assert config["weights_sha256"] == hashlib.sha256(data).hexdigest()
    del config["weights_sha256"]
    (saved_stamp / "stamp_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="fairstamp.stamp.artefact"):
        stamp = Stamp.from_pretrained(saved_stamp, tiny_loaded())
    assert stamp.layer == 1
    assert "records no sha256 of its weights" in caplog.text


def test_a_broken_stamp_on_the_command_line_is_exit_2(saved_stamp, tmp_path, capsys,
                                                      tiny_model_dir):
    _break(saved_stamp, "truncated")
    code, _, err = run(["generate", "--model", tiny_model_dir, "--stamp", saved_stamp, "Hi"],
                       capsys)
    assert code == 2 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and "stamp.safetensors: truncated" in err


# -- input limits -------------------------------------------------------------------------------

def test_a_10_mb_record_is_refused_quickly_with_file_and_line(tmp_path, capsys, tiny_model_dir):
    data = write_jsonl(tmp_path / "bias.jsonl",
                       [item(0), item(1, "The mother was " + "caring " * 1_500_000)])
    assert data.stat().st_size > 10_000_000
    for command in ("trace", "debias"):
        clock = time.perf_counter()
        code, _, err = run([command, "--model", tiny_model_dir, "--data", data, "--split" if
                            command == "trace" else "--layer", "all" if command == "trace"
                            else "1", "--out", tmp_path / "out"], capsys)
        assert code == 2, err
        assert time.perf_counter() - clock < 20
        assert error_lines(err) == [
            f"error: {data}:2: line longer than 1,048,576 bytes, refused unread (sentences are "
            f"limited to 512 tokens; --max-sentence-tokens)"]
        assert not (tmp_path / "out").exists()


def test_long_text_fields_are_refused_while_reading(tmp_path):
    text = "The mother was " + "very " * 4000 + "kind."
    data = write_jsonl(tmp_path / "bias.jsonl", [item(0), item(1, text)])
    with pytest.raises(DataError, match=r"bias.jsonl:2: field 'stereo' is 20,020 characters "
                                        r"long, over the limit of 16,384"):
        load_bias_file(data)
    with sentence_length_limit(1024):  # a higher token limit allows more characters
        assert max_text_chars() == 32768
        assert len(load_bias_file(data)) == 2
    plain = tmp_path / "in.txt"
    plain.write_text("Short.\n" + text + "\n")
    with pytest.raises(DataError, match=r"in.txt:2: the sentence is 20,020 characters long"):
        read_sentences(plain)


def test_the_token_limit_names_file_line_and_field(tmp_path, capsys, tiny_model_dir):
    data = write_jsonl(tmp_path / "bias.jsonl", [
        item(0), item(1, target="father"), item(2, "The nurse was " + "very " * 40 + "kind.",
                                                 target="nurse")])
    code, _, err = run(["trace", "--model", tiny_model_dir, "--data", data, "--split", "all",
                        "--max-sentence-tokens", "24", "--out", tmp_path / "t"], capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:3: field 'stereo' is ")
    assert lines[0].endswith("tokens long, over the limit of 24 (--max-sentence-tokens)")
    (tmp_path / "in.txt").write_text("One.\nThe nurse was " + "very " * 40 + "kind.\n")
    code, _, err = run(["score", tmp_path / "in.txt", "--model", tiny_model_dir,
                        "--max-sentence-tokens", "24"], capsys)
    assert code == 2 and error_lines(err)[0].startswith(f"error: {tmp_path / 'in.txt'}:2: the "
                                                        f"sentence is ")
    assert not (tmp_path / "t").exists()


def test_a_stereoset_context_without_blank_is_refused(tmp_path):
    document = json.loads((SHARED_DATA / "stereoset" / "dev.json").read_text())
    examples = document["data"]["intrasentence"][:3]
    examples[1]["context"] = "The chess player was smart."
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "x", "data": {"intrasentence": examples}}))
    with pytest.raises(DataError, match=r"intrasentence\[1\] .*has no BLANK"):
        load_stereoset(path)


def test_bench_workers_read_with_the_parents_sentence_length_limit(tiny_model_dir, tmp_path):
    """Each bench method runs in its own process; its readers must refuse what the parent's
    would (here a lower limit than the default), not fall back to the default."""
    data = write_jsonl(tmp_path / "bias.jsonl", [
        item(0), item(1, target="father"), item(2, "The nurse was " + "very " * 2000 + "kind.",
                                                 target="nurse")])
    config = BenchConfig(model=str(tiny_model_dir), methods=["fast"], data=str(data),
                         suite="biascope", n_resamples=10, n_generic=8,
                         data_dir=str(SHARED_DATA))
    with sentence_length_limit(64), pytest.raises(FairstampError, match="original model failed"):
        run_bench(config, tmp_path / "bench", isolate=True, progress=False)
    failure = json.loads((tmp_path / "bench" / "failed" / "original.json").read_text())
    assert f"{data}:3: field 'stereo' is 10,019 characters long, over the limit of 8,192" in \
        failure["error"]
