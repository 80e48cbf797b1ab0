"""CrowS-Pairs: the share of pairs whose more-stereotyping sentence scores higher."""

from __future__ import annotations

from collections.abc import Iterable

from fairstamp.data.crows import default_crows_path, load_crows_pairs
from fairstamp.errors import DataError
from fairstamp.evaluation.registry import SuiteContext, SuitePart, register_part
from fairstamp.metrics import bias

# StereoSet names race "race"; CrowS-Pairs names it "race-color".
_CROWS_TYPE = {"race": "race-color"}


@register_part("crows")
class CrowsPart(SuitePart):
    def load(self, context: SuiteContext) -> None:
        config = context.config
        crows_types = None
        if config.bias_types:
            crows_types = [_CROWS_TYPE.get(t, t) for t in config.bias_types
                           if t != "profession"]
            if not crows_types:
                raise DataError("CrowS-Pairs has no 'profession' bias type; choose others with "
                                "--bias-types or another suite")
        items = load_crows_pairs(config.crows_file, bias_types=crows_types, limit=config.limit)
        context.items["crows"] = items
        context.record("crows_pairs", config.crows_file or default_crows_path(), len(items))

    def sentences(self, context: SuiteContext) -> Iterable[str]:
        return bias.sentences_to_score(context.items["crows"],
                                       paraphrases="paraphrase" in context.parts)

    def run(self, context: SuiteContext) -> None:
        context.metrics["crows"] = {"crows": bias.crows_pairs_score(
            context.items["crows"], context.scores, **context.bootstrap).to_dict()}
