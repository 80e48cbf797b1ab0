"""MEMIT (mass-editing memory in a transformer; Meng et al. 2023) applied to social bias [baseline].

All bias items are edited at once, spread over several consecutive layers' MLP output projections
(default: the five layers ending at the run's layer). For each item, z* is found as ROME's v*
(`rome.optimise_target`: the same bias loss, KL and clamp) but on the residual stream, the output
of the last edited layer at the subject's last token. Then, layer by layer from the lowest: the
current keys K (the projection's inputs at the subject, averaged over each item's sentences) and
the residual R = (Z − current last-layer output) / (layers left) give
ΔW = R Kᵀ (λ·C + K Kᵀ)⁻¹ (C: the keys' second moment on generic text, λ = `mom2_update_weight`),
which is applied before the next layer's keys are read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from fairstamp.errors import FairstampError
from fairstamp.methods.base import EditContext, Method, WeightEdit, module_param_name, snapshot
from fairstamp.methods.covariance import DEFAULT_N_TOKENS
from fairstamp.methods.rome import (
    add_update,
    collect_at_subjects,
    optimise_target,
    requests_and_statistics,
    solve,
    target_summary,
)
from fairstamp.models.archspec import check_layers, get_module
from fairstamp.scoring.upper import UpperForward
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: How many layers, ending at the run's layer, MEMIT edits by default (MEMIT: 5 for GPT-2 XL).
DEFAULT_SPAN = 5


@dataclass
class MemitConfig:
    """MEMIT's knobs (defaults: MEMIT's GPT-J hyperparameters)."""

    layers: str = ""  # e.g. "16,17,18,19,20"; empty: the 5 layers ending at the run's layer
    v_num_grad_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    v_loss_stop: float = 0.0  # (MEMIT: 5e-2 on its NLL loss)
    mom2_update_weight: float = 15000.0  # λ in (λ·C + K Kᵀ)⁻¹, C the per-token mean
    framings: int = 2
    n_tokens: int = DEFAULT_N_TOKENS
    max_items: int | None = None


def edit_layers(spec: Any, layer: int, num_layers: int, model_name: str = "the model"
                ) -> list[int]:
    """The layers to edit: `spec` ("16,17,18", or a list), else the `DEFAULT_SPAN` layers ending
    at `layer`."""
    if spec in (None, "", [], ()):
        layers = list(range(max(0, layer - DEFAULT_SPAN + 1), layer + 1))
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            layers = [int(p) for p in parts if str(p).strip()]
        except ValueError:
            raise FairstampError(f"layers must be comma-separated layer numbers, not "
                                 f"{spec!r}") from None
    if not layers:
        raise FairstampError("MEMIT needs at least one layer to edit")
    check_layers(layers, num_layers, model_name)
    if len(set(layers)) != len(layers):
        raise FairstampError(f"layers {layers} repeat a layer")
    return sorted(layers)


class MemitMethod(Method):
    """MEMIT: every item at once, spread over several layers' MLP output projections."""

    name = "memit"
    config_class = MemitConfig
    description = "batch edits spread over several MLP output projections (MEMIT)"

    def fit(self, context: EditContext) -> WeightEdit:
        cfg: MemitConfig = self.config
        start = time.perf_counter()
        loaded = context.loaded
        model, arch = loaded.model, loaded.arch
        layers = edit_layers(cfg.layers, context.layer, context.num_layers, loaded.name)
        z_layer = layers[-1]
        requests, moments, stats_seconds = requests_and_statistics(context, cfg, layers)
        projs = {layer: get_module(model, arch.mlp_out_proj_path(layer)) for layer in layers}
        names = {layer: module_param_name(model, proj) for layer, proj in projs.items()}
        originals = snapshot(model, names.values())

        upper = UpperForward(model, arch, z_layer)
        path = arch.layer_path(z_layer)
        results = []
        log.info("MEMIT: %d items at layers %s (z* at the output of layer %d)", len(requests),
                 layers, z_layer)
        with progress_bar(len(requests), "MEMIT z*", context.progress) as advance:
            for request in requests:
                results.append(optimise_target(loaded, upper, request, path, cfg))
                advance()
        zs = torch.stack([r.target for r in results]).double()  # [n, hidden]

        z_error = []
        try:
            for i, layer in enumerate(layers):
                keys, current = collect_at_subjects(loaded, requests, key_layers=[layer],
                                                    out_layer=z_layer)
                update = memit_update(keys[layer], zs - current.double(), moments[layer],
                                      cfg.mom2_update_weight, len(layers) - i)
                add_update(projs[layer], update)
                z_error.append(round(float((zs - current.double()).norm(dim=1).mean()), 6))
            _, final = collect_at_subjects(loaded, requests, out_layer=z_layer)
            z_error.append(round(float((zs - final.double()).norm(dim=1).mean()), 6))
        except BaseException:
            WeightEdit(self.name, model, originals).restore(loaded)
            raise
        info = {"layers": layers, "z_layer": z_layer, "items_edited": len(requests),
                "item_ids": [r.item_id for r in requests],
                "config": self.config_dict(), **target_summary(results),
                "z_error_by_layer": z_error,  # mean ‖z* − output‖ before each layer, then after
                "subject_fallbacks": sum(r.fallbacks for r in requests),
                "stats_seconds": round(stats_seconds, 2),
                "seconds": round(time.perf_counter() - start, 2)}
        return WeightEdit(self.name, model, originals, info)


def memit_update(keys: torch.Tensor, residuals: torch.Tensor, second_moment: torch.Tensor,
                 weight: float, layers_left: int) -> torch.Tensor:
    """ΔW ([out, in]) = R Kᵀ (λ·C + K Kᵀ)⁻¹ with K = keysᵀ, R = residualsᵀ / layers_left
    (MEMIT's `execute_memit`, in float64)."""
    k = keys.double().T  # [in, n]
    r = residuals.double().T.to(k.device) / layers_left  # [out, n]
    adjusted = solve(weight * second_moment.to(k.device, torch.float64) + k @ k.T, k)
    return r @ adjusted.T


__all__ = ["MemitConfig", "MemitMethod", "edit_layers", "memit_update"]

