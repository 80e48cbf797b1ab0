import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from fairstamp.errors import ModelNotFoundError, UnsupportedArchitectureError
from fairstamp.models import ALIASES, alias_cache_dir, cache_root, cached_alias_info, load
from fairstamp.utils.io import atomic_write_text, staging_dir


def test_local_folder_loads_frozen_in_eval_mode(tiny_model_dir):
    loaded = load(str(tiny_model_dir))
    assert loaded.source == "local"
    assert loaded.arch.family == "Llama/SmolLM"
    assert loaded.num_layers == 3
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    reference = build_tiny_model("llama")
    ids = torch.tensor([[1, 4, 8, 15]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits)


def test_missing_path_file_and_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        load(str(tmp_path / "nope") + "/")
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        load("./not/here")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="found a file"):
        load(str(file))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load(str(tmp_path))


def test_alias_typo_is_caught_without_the_network():
    with pytest.raises(ModelNotFoundError, match="did you mean 'smollm2-135m'"):
        load("smollm-135m")


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    from transformers import BloomConfig

    BloomConfig(n_layer=1, hidden_size=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match=r"'bloom'.*supported: GPT-2"):
        load(str(tmp_path))


def test_cache_location_follows_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRSTAMP_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert alias_cache_dir("smollm2-135m") == tmp_path / "env" / "models" / "smollm2-135m"
    monkeypatch.delenv("FAIRSTAMP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "fairstamp"


def test_staging_dir_leaves_nothing_behind_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), staging_dir(final) as stage:
        atomic_write_text(stage / "half.txt", "partial")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staging_dir(final) as stage:
        atomic_write_text(stage / "done.txt", "ok")
    assert (final / "done.txt").read_text() == "ok"
    with pytest.raises(FileExistsError, match="already exists"), staging_dir(final):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.slow
def test_two_processes_converting_at_once_leave_one_complete_cache(tmp_path):
    """Both processes get a working model; the cache holds exactly one finished folder and no
    staging leftovers."""
    code = ("import sys; from fairstamp.models import load; "
            "lm = load('smollm2-135m', cache_dir=sys.argv[1]); print(lm.path)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    final = alias_cache_dir("smollm2-135m", tmp_path)
    assert {o[0].strip() for o in outs} == {str(final)}
    models = final.parent
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m"]
    info = cached_alias_info("smollm2-135m", tmp_path)
    assert info["distribution"] == ALIASES["smollm2-135m"].distribution
    assert len(info["gguf_sha256"]) == 64
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config
    assert (final / "model.safetensors").is_file()
    assert not list(Path(final).glob("*.bin"))
