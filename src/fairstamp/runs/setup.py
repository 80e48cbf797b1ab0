"""What an edit run prepares before any method runs: the bias items and their split by target,
the training text, the evaluation settings, and the `EditContext` every method fits on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairstamp.data.attribute_words import ATTRIBUTE_WORDS
from fairstamp.data.bias_sets import load_bias_set
from fairstamp.data.counterfactual import SWAPPED_TYPES, AttributeSwap
from fairstamp.data.items import BiasItem, RetentionItem
from fairstamp.data.locations import data_root
from fairstamp.data.splits import split_by_target
from fairstamp.data.training_text import training_text
from fairstamp.errors import DataError
from fairstamp.evaluation.config import EvalConfig
from fairstamp.methods.base import EditContext
from fairstamp.runs.config import EditRunConfig

log = logging.getLogger(__name__)


@dataclass
class EditSetup:
    """The items, split, training text and evaluation settings of one edit run (the same for
    every method of a bench run)."""

    items: list[BiasItem]
    edit: list[BiasItem]
    held_out: list[BiasItem]
    retention_sentences: list[str]
    generic_sentences: list[str]
    generic_passages: list[str]
    retention_trained: list[RetentionItem]
    data_root: Path
    eval_config: EvalConfig
    group_swap: AttributeSwap | None = None

    def context(self, loaded: Any, layer: int, *, seed: int, cache_dir: str | Path | None = None,
                progress: bool | None = None, items: list[BiasItem] | None = None
                ) -> EditContext:
        """What a method fits on: this setup's edit side (or `items`), text and seed, at
        `layer`."""
        return EditContext(
            loaded=loaded, items=self.edit if items is None else items,
            bias_types=self.eval_config.bias_types or sorted({i.bias_type for i in self.items}),
            layer=layer, retention_sentences=self.retention_sentences,
            generic_sentences=self.generic_sentences, generic_passages=self.generic_passages,
            data_root=self.data_root, cache_dir=Path(cache_dir) if cache_dir else None,
            seed=seed, progress=progress,
            group_swap=self.swap_for(self.edit if items is None else items))

    def swap_for(self, items: list[BiasItem]) -> AttributeSwap | None:
        """The group words an edit of `items` may write (subject swaps, target augmentation):
        never a target of this setup's other items, which are held out from that edit."""
        if self.group_swap is None:
            return None
        edited = {i.target.casefold() for i in items}
        return self.group_swap.without(sorted({i.target for i in self.items
                                               if i.target.casefold() not in edited}))


def check_group_words(config: EditRunConfig) -> None:
    """Refuse, before any model work, training settings that swap group words (subject-swap
    pairs, L_c) when there are none to swap: no attribute-words file, no bias type it covers,
    or L_c narrowed to bias types the edit does not hold."""
    fit = getattr(config, "fit", None)
    listed = tuple(getattr(fit, "counterfactual_types", ()))
    if listed and config.bias_types and not set(listed) & set(config.bias_types):
        raise DataError(f"counterfactual_types={','.join(listed)} draws L_c's prefix pairs "
                        f"from edited items of {', '.join(listed)}, and the edit is of "
                        f"{', '.join(config.bias_types)}: list a bias type it edits, or leave "
                        "counterfactual_types out")
    needs = fit.needs_group_words if fit is not None else None
    if not needs:
        return
    root = data_root(config.data_dir)
    path = Path(root) / ATTRIBUTE_WORDS if root is not None else ATTRIBUTE_WORDS
    if root is None or not path.is_file():
        raise DataError(f"{needs} swaps group words, read from {path}, which is missing: pass "
                        "--data-dir with the public data folder, or train without it")
    if config.bias_types and not set(config.bias_types) & set(SWAPPED_TYPES):
        raise DataError(f"{needs} swaps group words, which exist for "
                        f"{', '.join(SWAPPED_TYPES)} only; the edit is of "
                        f"{', '.join(config.bias_types)}")


def prepare_edit(config: EditRunConfig) -> EditSetup:
    """Load and split the bias items and the training text that `config` names."""
    root = data_root(config.data_dir)
    if root is None:
        raise DataError("editing needs the public data folder (WikiText-2, paraphrases): "
                        "pass --data-dir or set $FAIRSTAMP_DATA")
    check_group_words(config)
    # Paraphrases are evaluation-only: `evaluate` attaches them; training never reads them.
    items = load_bias_set(config.data, config.bias_types, config.limit)
    edit, held_out = split_by_target(items, held_out_fraction=config.held_out_fraction,
                                     seed=config.seed)
    if not edit:
        raise DataError("no items on the edit side of the split; lower --held-out-fraction")
    log.info("%d bias items: %d to edit, %d on held-out targets", len(items), len(edit),
             len(held_out))
    text = training_text(config.bias_types, seed=config.seed, data_dir=root,
                         n_generic=config.n_generic, n_passages=config.n_passages,
                         passage_words=config.passage_words)
    trained_retention = text.retention_trained
    eval_config = EvalConfig(
        model=config.model, suite=config.suite, bias_types=config.bias_types,
        seed=config.seed, n_resamples=config.n_resamples,
        held_out_fraction=config.held_out_fraction, data_dir=str(root),
        general_limits=dict(config.general_limits),
        transfer_limits=dict(config.transfer_limits), edited_ids=[i.id for i in edit],
        retention_trained_ids=[r.id for r in trained_retention])
    return EditSetup(items=items, edit=edit, held_out=held_out,
                     retention_sentences=text.retention_sentences,
                     generic_sentences=text.generic_sentences,
                     generic_passages=text.generic_passages,
                     retention_trained=trained_retention, data_root=Path(root),
                     eval_config=eval_config, group_swap=text.group_swap)
