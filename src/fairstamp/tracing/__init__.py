"""Tracing: where in a model a bias lives (causal tracing by corruption and restoration)."""

from fairstamp.tracing.bias import (
    Heatmap,
    ItemTokens,
    TraceResult,
    gap_metric,
    item_tokens,
    trace_bias,
)
from fairstamp.tracing.patching import (
    COMPONENTS,
    Corruption,
    PatchingResult,
    Restoration,
    TokenGroup,
    component_path,
    embedding_std,
    gaussian_noise,
    patch_activations,
    window_layers,
)

__all__ = [
    "COMPONENTS",
    "Corruption",
    "Heatmap",
    "ItemTokens",
    "PatchingResult",
    "Restoration",
    "TokenGroup",
    "TraceResult",
    "component_path",
    "embedding_std",
    "gap_metric",
    "gaussian_noise",
    "item_tokens",
    "patch_activations",
    "trace_bias",
    "window_layers",
]
