import pytest
import torch

from conftest import ARCHS, build_tiny_model
from fairstamp.errors import FairstampError, UnsupportedArchitectureError
from fairstamp.models import (
    ARCH_SPECS,
    arch_spec_for,
    arch_spec_for_model_type,
    archspec,
    get_module,
    supported_model_types,
)
from fairstamp.models.archspec import (
    LayerRangeError,
    check_layer,
    check_layers,
    is_conv1d,
    linear_weight,
)
from fairstamp.utils import modules

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


# -- the layer range, the Conv1D orientation, the module resolver -------------------------------


def test_check_layer_gives_the_one_message():
    assert check_layer(0, 3, "tiny") == 0 and check_layer(2, 3, "tiny") == 2
    for bad in (3, -1, 999):
        with pytest.raises(FairstampError) as info:
            check_layer(bad, 3, "tiny-llama")
        assert str(info.value) == f"layer {bad} is out of range: tiny-llama has 3 layers (0-2)"
    with pytest.raises(LayerRangeError, match=r"^layer 7 is out of range: the model has 3 layers"):
        check_layer(7, 3)
    for bad in (True, 1.0, "1"):  # not a layer index, whatever its value
        with pytest.raises(FairstampError, match="is out of range"):
            check_layer(bad, 3, "m")
    assert issubclass(LayerRangeError, ValueError)  # tracing's callers catch ValueError
    assert check_layers([2, 0], 3, "m") == [2, 0]
    with pytest.raises(FairstampError, match=r"^layer 5 is out of range: m has 3 layers"):
        check_layers([1, 5, 9], 3, "m")  # the first one out of range is named


def test_conv1d_weight_is_viewed_as_linear(tiny_models):
    gpt2, llama = tiny_models["gpt2"], tiny_models["llama"]
    proj = get_module(gpt2, arch_spec_for(gpt2).mlp_out_proj_path(1))  # transformers' Conv1D
    down = get_module(llama, arch_spec_for(llama).mlp_out_proj_path(1))
    assert is_conv1d(proj) and not is_conv1d(down) and not is_conv1d(torch.nn.Linear(2, 2))
    assert proj.weight.shape == (4 * HIDDEN, HIDDEN)  # stored [in, out]
    weight = linear_weight(proj)
    assert weight.shape == (HIDDEN, 4 * HIDDEN) and weight.data_ptr() == proj.weight.data_ptr()
    assert linear_weight(down) is down.weight
    x = torch.randn(5, 4 * HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(torch.nn.functional.linear(x, weight, proj.bias), proj(x),
                              atol=1e-6)
    module = get_module(build_tiny_model("gpt2"), "transformer.h.0.mlp.c_proj")
    before = module.weight.detach().clone()
    with torch.no_grad():
        linear_weight(module)[3, 7] += 1.0  # writes reach the stored [in, out] weight
    assert module.weight[7, 3] == before[7, 3] + 1.0


def test_module_resolver_lives_in_utils_and_archspec_re_exports_it(tiny_models):
    assert archspec.get_module is modules.get_module and archspec.set_module is modules.set_module
    model = build_tiny_model("gpt_neox")
    head = modules.get_module(model, "lm_head|embed_out")
    replacement = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    modules.set_module(model, "missing_head|lm_head|embed_out", replacement)
    assert modules.get_module(model, "lm_head|embed_out") is replacement is not head
    with pytest.raises(UnsupportedArchitectureError, match="'nowhere' not found in"):
        modules.get_module(model, "nowhere")
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt_neox\.nowhere' not found in"):
        modules.set_module(model, "gpt_neox.nowhere", replacement)
