"""The parts measured on the bias items (StereoSet, or the user's bias file, or items the caller
loaded): SS and the official StereoSet scores, PS on paraphrases, SS/PS on a stamp's edited
items, and SS on held-out targets.

The four share one item set (`bias_items`) and declare the same sentences, item by item (each
item's stereo, anti and unrelated sentence, then its paraphrases when the suite measures PS), so
the suite scores them once in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fairstamp.data.bias_file import load_bias_file
from fairstamp.data.items import BiasItem
from fairstamp.data.locations import GPT_PARAPHRASES
from fairstamp.data.paraphrases import attach_paraphrases, load_paraphrase_file
from fairstamp.data.splits import split_by_target
from fairstamp.data.stereoset import default_stereoset_path, load_stereoset
from fairstamp.data.validate import select
from fairstamp.evaluation.registry import SuiteContext, SuitePart, register_part
from fairstamp.metrics import bias

log = logging.getLogger(__name__)

#: The item set's key in `SuiteContext.items` (and `Evaluation.items`).
BIAS_ITEMS = "stereoset"


def bias_items(context: SuiteContext) -> list[BiasItem]:
    """The evaluated bias items, loaded (and recorded) by the first part that asks: the caller's,
    the --bias-file's or StereoSet's."""
    if BIAS_ITEMS in context.items:
        return context.items[BIAS_ITEMS]
    config = context.config
    if context.given_bias_items is not None:
        items = list(context.given_bias_items)
        context.record("bias_items", None, len(items))
    elif config.bias_file:
        types = frozenset(config.bias_types) if config.bias_types else None
        items = select(load_bias_file(config.bias_file), config.bias_file, bias_types=types,
                       limit=config.limit)
        context.record("bias_file", config.bias_file, len(items))
    else:
        items = load_stereoset(config.stereoset_file, bias_types=config.bias_types,
                               limit=config.limit)
        context.record("stereoset", config.stereoset_file or default_stereoset_path(), len(items))
    context.items[BIAS_ITEMS] = items
    return items


class BiasItemPart(SuitePart):
    """A part measured on the shared bias items."""

    def load(self, context: SuiteContext) -> None:
        bias_items(context)

    def sentences(self, context: SuiteContext) -> Iterable[str]:
        return bias.sentences_to_score(bias_items(context),
                                       paraphrases="paraphrase" in context.parts)


@register_part("stereoset")
class StereoSetPart(BiasItemPart):
    """SS (micro), and with unrelated sentences the official SS (macro), LMS, ICAT and SS per
    target."""

    def run(self, context: SuiteContext) -> None:
        items, scores, kw = bias_items(context), context.scores, context.bootstrap
        section = {"ss": bias.stereotype_score(items, scores, **kw).to_dict()}
        if all(i.unrelated is not None for i in items):
            official = bias.stereoset_scores(items, scores, **kw)
            section.update({"ss_macro": official.ss.to_dict(), "lms": official.lms.to_dict(),
                            "icat": official.icat.to_dict(),
                            "lms_micro": bias.language_modeling_score(items, scores,
                                                                      **kw).to_dict()})
            context.metrics["per_target"] = bias.stereoset_per_target(items, scores)
        context.metrics["stereoset"] = section


@register_part("paraphrase")
class ParaphrasePart(BiasItemPart):
    """PS: SS on paraphrases of the bias items (GPT paraphrases from the data folder or
    --paraphrase-file, rule-based ones for the rest unless turned off)."""

    def load(self, context: SuiteContext) -> None:
        config, root = context.config, context.root
        path = config.paraphrase_file
        if path is None and root is not None and (root / GPT_PARAPHRASES).is_file():
            path = root / GPT_PARAPHRASES
        mapping = load_paraphrase_file(path) if path else {}
        items = attach_paraphrases(bias_items(context), mapping,
                                   rule_fallback=config.rule_paraphrases)
        context.items[BIAS_ITEMS] = items
        context.record("paraphrases", path, sum(len(i.paraphrases) for i in items), unit="pairs")

    def run(self, context: SuiteContext) -> None:
        items = bias_items(context)
        if any(i.paraphrases for i in items):
            context.metrics["paraphrase"] = {
                "ps": bias.paraphrase_stereotype_score(items, context.scores,
                                                       **context.bootstrap).to_dict()}


@register_part("edited")
class EditedPart(BiasItemPart):
    """SS (and PS) on the items a stamp was trained on, when their ids are known."""

    def run(self, context: SuiteContext) -> None:
        edited_ids = set(context.config.edited_ids or ())
        if not edited_ids:
            return
        edited = [i for i in bias_items(context) if i.id in edited_ids]
        if not edited:  # a stamp checked on other sentences: every item is held out
            log.info("none of the stamp's %d edited items is in the evaluated bias set: every "
                     "item counts as held-out", len(edited_ids))
            return
        kw = context.bootstrap
        section = {"ss": bias.stereotype_score(edited, context.scores, **kw).to_dict(),
                   "n_items": len(edited), "n_edited_ids": len(edited_ids)}
        if "paraphrase" in context.parts and any(i.paraphrases for i in edited):
            section["ps"] = bias.paraphrase_stereotype_score(edited, context.scores,
                                                             **kw).to_dict()
        context.metrics["edited"] = section


@register_part("held_out")
class HeldOutPart(BiasItemPart):
    """SS on targets no edit saw: those with no edited item, else the held-out side of the
    seeded target split."""

    def run(self, context: SuiteContext) -> None:
        config, items = context.config, bias_items(context)
        edited_ids = set(config.edited_ids or ())
        if edited_ids:
            touched = {(i.bias_type, i.target) for i in items if i.id in edited_ids}
            held_out = [i for i in items if (i.bias_type, i.target) not in touched]
        else:
            _, held_out = split_by_target(items, held_out_fraction=config.held_out_fraction,
                                          seed=config.seed)
        if held_out:
            context.metrics["held_out"] = {
                "ss": bias.stereotype_score(held_out, context.scores,
                                            **context.bootstrap).to_dict(),
                "n_targets": len({(i.bias_type, i.target) for i in held_out}),
                "n_items": len(held_out),
            }
            if edited_ids and len(held_out) == len(items):
                context.metrics["held_out"]["every_item_unedited"] = True
        else:  # said in the reports, rather than a row that silently disappears
            n_targets = len({(i.bias_type, i.target) for i in items})
            context.metrics["held_out"] = {"n_items": 0, "n_targets": 0, "empty": (
                f"every one of the {n_targets} targets has edited items" if edited_ids else
                f"the seeded split (held-out fraction {config.held_out_fraction:g}) holds out "
                f"none of the {n_targets} targets")}
