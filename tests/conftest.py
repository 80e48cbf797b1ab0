"""Shared fixtures: a tiny tokenizer trained on real StereoSet text, tiny random models of every
supported architecture, and the real `smollm2-135m` for end-to-end checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FAIRSTAMP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def stereoset_sentences(limit: int | None = None) -> list[str]:
    """All StereoSet dev intrasentence sentences (real data from ../shared/data)."""
    data = json.loads((SHARED_DATA / "stereoset" / "dev.json").read_text())
    out = [s["sentence"] for item in data["data"]["intrasentence"] for s in item["sentences"]]
    return out[:limit] if limit else out


def tiny_configs(vocab_size: int) -> dict:
    import transformers as T

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "gpt2": T.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=1024, **common),
        "gpt_neo": T.GPTNeoConfig(num_layers=3, hidden_size=32, num_heads=4, window_size=16,
                                  attention_types=[[["global", "local"], 1], [["global"], 1]],
                                  max_position_embeddings=1024, **common),
        "gptj": T.GPTJConfig(n_layer=3, n_embd=32, n_head=4, rotary_dim=4, n_positions=1024,
                             **common),
        "gpt_neox": T.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=1024, **common),
        "opt": T.OPTConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                           max_position_embeddings=1024, word_embed_proj_dim=32, **common),
        "llama": T.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64,
                               max_position_embeddings=1024, **common),
        "mistral": T.MistralConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64,
                                   max_position_embeddings=1024, **common),
        "qwen2": T.Qwen2Config(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64,
                               max_position_embeddings=1024, **common),
        "gemma3_text": T.Gemma3TextConfig(num_hidden_layers=3, hidden_size=32,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=8, intermediate_size=64, sliding_window=16,
                                          max_position_embeddings=1024, **common),
    }


ARCHS = list(tiny_configs(300))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 300) trained on StereoSet sentences, with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(stereoset_sentences(2000), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def build_tiny_model(arch: str, vocab_size: int = 300, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_configs(vocab_size)[arch])
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny randomly initialised model per supported architecture (built once)."""
    return {arch: build_tiny_model(arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny Llama model + tokenizer: a local folder like a user's checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained smollm2-135m (converted once into the user's cache)."""
    from fairstamp.models import load

    return load("smollm2-135m")
