"""FAST's stamp training: a fresh, zero-output stamp at one layer, trained by the shared loop
(`fairstamp.training.loop.train_at_layer`) and kept attached. The loss and the loop's knobs are
documented in `fairstamp.training.loop`; the stamp's own (width, activation, what it reads, the
optimiser) are here."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from fairstamp.data.counterfactual import AttributeSwap
from fairstamp.data.items import BiasItem
from fairstamp.errors import FairstampError
from fairstamp.fast.recipes import counterfactual_weight_for, sign_weight_for
from fairstamp.stamp.artefact import Stamp, new_stamp
from fairstamp.stamp.module import check_reads, detach
from fairstamp.training.loop import LoopSettings, Trainable, TrainRun, train_at_layer

log = logging.getLogger(__name__)


@dataclass
class FitConfig(LoopSettings):
    """Knobs of stamp training (recorded in stamp_config.json): the stamp's shape and optimiser,
    plus the loop's. Defaults: docs/fast.md."""

    # FAST's recipe (docs/fast.md, "Counterfactual next-token distributions"): L_c on where the
    # edit has group words to swap, with three times the loop's weight on L_s1.
    retention_weight: float = 3.0
    # 0: the automatic length (`LoopSettings.step_limit`: SMALL_MAX_STEPS, LARGE_MAX_STEPS above
    # SMALL_EDIT_ITEMS items)
    max_steps: int = 0
    counterfactual_weight: float | None = None
    # λ: None is the model's measured value (`fairstamp.fast.recipes`: 1 on gemma-3-270m), else
    # the measured one of an edit of several bias types (1), else 0
    sign_weight: float | None = None
    width: int = 256
    activation: str = "gelu"
    reads: str = "mlp_output"
    lr: float = 3e-3
    weight_decay: float = 1e-3


@dataclass
class FitResult(TrainRun):
    """A trained (attached) stamp and how training went."""

    stamp: Stamp = field(kw_only=True)


def fit_stamp(
    loaded: Any,
    items: Sequence[BiasItem],
    layer: int,
    *,
    retention_sentences: Sequence[str] = (),
    generic_sentences: Sequence[str] = (),
    generic_passages: Sequence[str] = (),
    text: Any = None,
    group_swap: AttributeSwap | None = None,
    config: FitConfig | None = None,
    monitor: Sequence[BiasItem] = (),
    progress: bool | None = None,
) -> FitResult:
    """Train one stamp at `layer` on `items` (batch editing); it stays attached to the model.

    The KL terms read `retention_sentences` (L_s1), `generic_sentences` and `generic_passages`
    (L_s2), or all three from `text` (a `fairstamp.data.training_text.TrainingText`, which also
    brings `group_swap`, the group words of subject-swap pairs). `monitor` items are scored at
    every check and only recorded (`train_at_layer`).

    Stamps already attached (earlier edits) stay on and are part of the "original" the new stamp
    must preserve: that is sequential editing by stacking.
    """
    config = for_model(config or FitConfig(), loaded.name, [i.bias_type for i in items])
    check_reads(loaded.arch, config.reads)  # before minutes of setup
    if text is not None:
        retention_sentences, generic_sentences, generic_passages = (
            text.retention_sentences, text.generic_sentences, text.generic_passages)
        group_swap = group_swap or text.group_swap
    holder: dict[str, Stamp] = {}

    def make() -> Trainable:
        stamp = new_stamp(loaded, layer, width=config.width, activation=config.activation,
                          reads=config.reads, seed=config.seed, training=config.to_dict())
        params = list(stamp.module.parameters())
        for p in params:
            p.requires_grad_(False)  # trainable only while the loop runs
        try:
            optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        except ValueError as exc:
            raise FairstampError(f"stamp training settings: {exc}") from None
        stamp.attach_to(loaded)
        holder["stamp"] = stamp
        return Trainable(params, optimizer, f"stamp @ layer {layer}",
                         undo=lambda: detach(loaded.model, loaded.arch, stamp.module),
                         what=f"a width-{config.width} stamp", kept="stamp")

    run = train_at_layer(loaded, items, layer, make, retention_sentences=retention_sentences,
                         generic_sentences=generic_sentences, generic_passages=generic_passages,
                         config=config, group_swap=group_swap, monitor=monitor,
                         progress=progress)
    stamp = holder["stamp"]
    stamp.module.eval()
    result = FitResult(stamp=stamp, **{f.name: getattr(run, f.name) for f in fields(TrainRun)})
    stamp.config.training = {**config.to_dict(), **result.summary()}
    return result


def for_model(config: FitConfig, model_name: str, bias_types: Iterable[str] = ()) -> FitConfig:
    """`config` with what it leaves to the model and the edit filled in for `model_name` and an
    edit of items of `bias_types` (`fairstamp.fast.recipes`): λ when None; δ when None and the
    edit spans several bias types (else None stays: the loop's automatic δ)."""
    bias_types = list(bias_types)
    sign_weight, source = sign_weight_for(config.sign_weight, model_name, bias_types)
    if source.startswith("measured"):
        log.info("batch lean λ = %g (%s)", sign_weight, source)
    delta, delta_source = counterfactual_weight_for(config.counterfactual_weight, bias_types,
                                                    asked=config.counterfactual_asked)
    if delta_source.startswith("measured"):
        log.info("L_c's weight δ = %g (%s)", delta, delta_source)
    return replace(config, sign_weight=sign_weight, counterfactual_weight=delta)


__all__ = ["FitConfig", "FitResult", "fit_stamp", "for_model"]
