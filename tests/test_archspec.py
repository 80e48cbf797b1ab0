import pytest
import torch

from conftest import ARCHS
from fairstamp.errors import UnsupportedArchitectureError
from fairstamp.models import (
    ARCH_SPECS,
    arch_spec_for,
    arch_spec_for_model_type,
    get_module,
    supported_model_types,
)

HIDDEN, VOCAB, LAYERS = 32, 300, 3


def test_every_listed_family_has_a_tiny_model():
    assert sorted(ARCHS) == supported_model_types()
    assert {"GPT-2", "GPT-Neo", "GPT-J", "GPT-NeoX/Pythia", "OPT", "Llama/SmolLM", "Mistral",
            "Qwen2", "Gemma 3"} == {s.family for s in ARCH_SPECS}


@pytest.mark.parametrize("arch", ARCHS)
def test_table_matches_the_model(arch, tiny_models):
    model = tiny_models[arch]
    spec = arch_spec_for(model)
    assert arch in spec.model_types
    assert spec.num_layers(model) == LAYERS
    embed = get_module(model, spec.embed)
    assert isinstance(embed, torch.nn.Embedding) and embed.num_embeddings == VOCAB
    unembed = get_module(model, spec.unembed)
    assert unembed.out_features == VOCAB
    norm = get_module(model, spec.final_norm)
    assert sum(p.numel() for p in norm.parameters()) >= HIDDEN
    proj = get_module(model, spec.mlp_out_proj_path(1))
    assert proj.weight.shape[0 if isinstance(proj, torch.nn.Linear) else 1] == HIDDEN


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_and_attention_outputs_are_residual_sized_and_feed_the_logits(arch, tiny_models):
    """Hooks on the MLP/attention paths see [batch, seq, hidden]; zeroing the last layer's MLP
    output changes the logits (so the path really is on the residual stream)."""
    model = tiny_models[arch]
    spec = arch_spec_for(model)
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    seen = {}

    def grab(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [
        get_module(model, spec.mlp_path(2)).register_forward_hook(grab("mlp")),
        get_module(model, spec.attn_path(2)).register_forward_hook(grab("attn")),
    ]
    try:
        with torch.no_grad():
            clean = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    mlp_shape = (5, HIDDEN) if spec.mlp_output_flat else (1, 5, HIDDEN)
    assert seen["mlp"].shape == mlp_shape
    assert seen["attn"].shape == (1, 5, HIDDEN)

    handle = get_module(model, spec.mlp_path(2)).register_forward_hook(
        lambda m, a, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            ablated = model(ids).logits
    finally:
        handle.remove()
    assert not torch.allclose(clean, ablated)


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as info:
        arch_spec_for_model_type("bloom")
    message = str(info.value)
    assert "'bloom'" in message
    for family in ("GPT-2", "GPT-NeoX/Pythia", "Llama/SmolLM", "Gemma 3", "qwen2"):
        assert family in message


def test_model_without_config_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="model_type"):
        arch_spec_for(torch.nn.Linear(2, 2))
