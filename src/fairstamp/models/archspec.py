"""Architecture knowledge as data: where each model family keeps its layers, MLPs and embeddings.

Every method that hooks into a model (tracing, stamps, baselines) asks this table for module paths
instead of guessing from the model's name. Paths on `ArchSpec` are either absolute (from the
top-level `*ForCausalLM` module) or relative to one decoder layer, as the field names say.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import nn

from fairstamp.errors import FairstampError, UnsupportedArchitectureError
from fairstamp.utils.modules import get_module, set_module


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one model family.

    layers:        absolute path of the ModuleList of decoder layers.
    mlp:           path, relative to a layer, of the module whose output is the MLP's contribution
                   to the residual stream (before any dropout or residual add). Its output is
                   [batch, seq, hidden], except where `mlp_output_flat` says [batch*seq, hidden].
                   Where a norm follows the MLP (`mlp_normed`), that norm: the stamp and the
                   tracing hooks act on what the layer adds to the residual stream.
    mlp_out_proj:  relative path of the MLP's output projection (the Linear that ROME/FT-L edit).
    attn:          relative path of the attention module (its first output is the attention output).
    embed:         absolute path of the token embedding.
    final_norm:    absolute path of the final normalisation before the unembedding.
    unembed:       absolute path of the output projection to the vocabulary.

    mlp_normed:    `mlp` is a norm applied to the MLP's output (Gemma 3's post-feed-forward
                   RMSNorm), so its input is the MLP's raw output, not what the MLP reads.

    A path may list alternatives separated by `|`; the first that exists is used.
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    mlp: str
    mlp_out_proj: str
    attn: str
    embed: str
    final_norm: str
    unembed: str
    mlp_output_flat: bool = False
    mlp_normed: bool = False

    def num_layers(self, model: nn.Module) -> int:
        return len(get_module(model, self.layers))

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        return get_module(model, self.layers)[index]

    def layer_path(self, index: int, relative: str = "") -> str:
        """Absolute module path of layer `index`, or of `relative` inside it."""
        base = f"{self.layers}.{index}"
        return f"{base}.{relative}" if relative else base

    def mlp_path(self, index: int) -> str:
        return self.layer_path(index, self.mlp)

    def mlp_out_proj_path(self, index: int) -> str:
        return self.layer_path(index, self.mlp_out_proj)

    def attn_path(self, index: int) -> str:
        return self.layer_path(index, self.attn)

    def validate(self, model: nn.Module) -> None:
        """Check that every path resolves on `model` (raises with the first missing path)."""
        paths = [self.layers, self.embed, self.final_norm, self.unembed]
        if self.num_layers(model) > 0:
            paths += [self.mlp_path(0), self.mlp_out_proj_path(0), self.attn_path(0)]
        for path in paths:
            get_module(model, path)


class LayerRangeError(FairstampError, ValueError):
    """A layer index the model does not have."""


def check_layer(layer: int, num_layers: int, model_name: str = "the model") -> int:
    """`layer`, if a model of `num_layers` layers has it; else the one error every command and
    method gives for a layer out of range (a bool or a non-integer is out of range too)."""
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not 0 <= layer < num_layers:
        raise LayerRangeError(f"layer {layer} is out of range: {model_name} has {num_layers} "
                              f"layers (0-{num_layers - 1})")
    return layer


def check_layers(layers: Iterable[int], num_layers: int, model_name: str = "the model"
                 ) -> list[int]:
    """`check_layer` for each of several layers (the first one out of range is reported)."""
    return [check_layer(layer, num_layers, model_name) for layer in layers]


def is_conv1d(module: nn.Module) -> bool:
    """Whether `module` is transformers' `Conv1D` (GPT-2's linear layers), which stores its weight
    [in, out], transposed from nn.Linear's [out, in]. Matched by class name, so that transformers
    need not be imported."""
    return type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of an nn.Linear or a Conv1D as nn.Linear orients it, [out, in]; for a Conv1D
    its transpose, a view of the same storage (writing to it writes the module's weight)."""
    return module.weight.T if is_conv1d(module) else module.weight


_LLAMA_LIKE = dict(
    layers="model.layers",
    mlp="mlp",
    mlp_out_proj="mlp.down_proj",
    attn="self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    unembed="lm_head",
)

_GPT2_LIKE = dict(
    layers="transformer.h",
    mlp="mlp",
    mlp_out_proj="mlp.c_proj",
    attn="attn",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    unembed="lm_head",
)

ARCH_SPECS: tuple[ArchSpec, ...] = (
    ArchSpec(family="GPT-2", model_types=("gpt2",), **_GPT2_LIKE),
    ArchSpec(family="GPT-Neo", model_types=("gpt_neo",), **_GPT2_LIKE),
    ArchSpec(family="GPT-J", model_types=("gptj",), **{**_GPT2_LIKE, "mlp_out_proj": "mlp.fc_out"}),
    ArchSpec(
        family="GPT-NeoX/Pythia",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        mlp="mlp",
        mlp_out_proj="mlp.dense_4h_to_h",
        attn="attention",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head|embed_out",  # embed_out before transformers 5
    ),
    # OPT has no MLP container: fc2's output is the MLP's contribution to the residual stream,
    # computed on tokens flattened to [batch*seq, hidden].
    ArchSpec(
        family="OPT",
        model_types=("opt",),
        layers="model.decoder.layers",
        mlp="fc2",
        mlp_out_proj="fc2",
        attn="self_attn",
        embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        mlp_output_flat=True,
    ),
    ArchSpec(family="Llama/SmolLM", model_types=("llama",), **_LLAMA_LIKE),
    ArchSpec(family="Mistral", model_types=("mistral",), **_LLAMA_LIKE),
    ArchSpec(family="Qwen2", model_types=("qwen2",), **_LLAMA_LIKE),
    # Gemma 3 normalises the MLP's output (post_feedforward_layernorm) before adding it to the
    # residual stream: the stamp sits after that norm, where its write is not rescaled by the
    # activations it changes (docs/fast.md, gemma-3-270m). The attention output's norm does not
    # matter to tracing (restoring its input restores it).
    ArchSpec(family="Gemma 3", model_types=("gemma3_text",),
             **{**_LLAMA_LIKE, "mlp": "post_feedforward_layernorm"}, mlp_normed=True),
)

_BY_MODEL_TYPE = {mt: spec for spec in ARCH_SPECS for mt in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def arch_spec_for_model_type(model_type: str) -> ArchSpec:
    """The ArchSpec for a config's `model_type`; an error naming the supported ones otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        supported = ", ".join(f"{s.family} ({'/'.join(s.model_types)})" for s in ARCH_SPECS)
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {supported}"
        ) from None


def arch_spec_for(model: nn.Module) -> ArchSpec:
    """The ArchSpec of a loaded transformers model, validated against its modules."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no config.model_type; fairstamp needs a transformers "
            f"causal LM"
        )
    spec = arch_spec_for_model_type(model_type)
    spec.validate(model)
    return spec


__all__ = ["ARCH_SPECS", "ArchSpec", "LayerRangeError", "arch_spec_for", "arch_spec_for_model_type",
           "check_layer", "check_layers", "get_module", "is_conv1d", "linear_weight", "set_module",
           "supported_model_types"]
