"""FT-L (the constrained fine-tuning baseline of ROME, Meng et al. 2022) with FAST's loss.

The weight of the MLP output projection at the context's layer is trained with exactly the stamp's
loss, L = L_e + α·L_s1 + β·L_s2 + γ·L_m (SPEC §5, plus our L_m), by the same loop
(`training.loop.train_at_layer`: batching, cached lower layers, KL targets, early stopping on SS,
keep-best, NaN guard). After every Adam step the weight is clamped elementwise to W0 ±
`norm_constraint` (ROME's FT-L L∞ constraint). ROME's value for GPT-2 XL, 5e-4, is too tight for
smollm2-135m, whose MLP output weights are large (mean |w| 0.15 at layer 20): on 20 StereoSet
gender items at layer 20 the batch L_e is still 0.37 at step 20 with it, 0.16 with 5e-3 (about 3%
of a typical entry), which shrinks the items' mean |gap| 0.50 → 0.15 in 30 steps at a KL cost below
0.002 (docs/methods.md). The clamp is elementwise, so it is the same for `nn.Linear` ([out, in])
and GPT-2's `Conv1D` ([in, out]) weights.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fairstamp.errors import FairstampError
from fairstamp.methods.base import (
    Edit,
    EditContext,
    Method,
    WeightEdit,
    module_param_name,
    snapshot,
)
from fairstamp.models.archspec import check_layer, get_module
from fairstamp.training.loop import LoopSettings, Trainable, train_at_layer

log = logging.getLogger(__name__)


@dataclass
class FineTuneConfig(LoopSettings):
    """FT-L's knobs: the shared loop's (with the loop's defaults: α = 1, at most 200 steps), its
    optimiser and L∞ constraint."""

    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: float = 5e-3  # max |W − W0| per entry; 0 or less: unconstrained


class FineTuneMethod(Method):
    name = "ft"
    config_class = FineTuneConfig
    description = ("FT-L: the decisive layer's MLP output weight fine-tuned with FAST's loss, "
                   "kept within W0 ± norm_constraint")

    def fit(self, context: EditContext) -> Edit:
        config = self.seeded_config(context.seed)
        loaded, layer = context.loaded, context.layer
        model, arch = loaded.model, loaded.arch
        check_layer(layer, arch.num_layers(model), loaded.name)
        name = module_param_name(model, get_module(model, arch.mlp_out_proj_path(layer)))
        weight = dict(model.named_parameters())[name]
        originals = snapshot(model, [name])
        w0 = originals[name]
        eps = float(config.norm_constraint)
        low, high = (w0 - eps, w0 + eps) if eps > 0 else (None, None)

        def clamp() -> None:
            torch.clamp(weight, min=low, max=high, out=weight)

        def undo() -> None:
            with torch.no_grad():
                weight.copy_(w0)

        def make() -> Trainable:
            try:
                optimizer = torch.optim.Adam([weight], lr=config.lr,
                                             weight_decay=config.weight_decay)
            except ValueError as exc:
                raise FairstampError(f"ft settings: {exc}") from None
            return Trainable([weight], optimizer, f"FT-L @ layer {layer}", undo=undo,
                             after_step=clamp if eps > 0 else None, what=f"FT-L ({name})",
                             kept="weight change")

        run = train_at_layer(loaded, context.items, layer, make,
                             retention_sentences=context.retention_sentences,
                             generic_sentences=context.generic_sentences,
                             generic_passages=context.generic_passages, config=config,
                             group_swap=context.group_swap, monitor=context.monitor_items,
                             progress=context.progress)
        with torch.no_grad():
            delta = (weight.detach() - w0).abs().max().item()
        info: dict[str, Any] = {"layer": layer, "parameter": name, **asdict(config),
                                "max_abs_delta": delta, **run.summary(),
                                "history": run.history}
        return WeightEdit(self.name, model, originals, info)
