"""Knowledge about the same groups: DS on the retention set, and RS (with a reference run's
predictions) overall and on the retention items a stamp never trained on."""

from __future__ import annotations

from collections.abc import Iterable

from fairstamp.data.retention import default_retention_path, load_retention
from fairstamp.errors import DataError
from fairstamp.evaluation.registry import SuiteContext, SuitePart, register_part
from fairstamp.metrics import bias


@register_part("retention")
class RetentionPart(SuitePart):
    def load(self, context: SuiteContext) -> None:
        config = context.config
        items = load_retention(config.retention_file)
        if config.bias_types:
            items = [i for i in items if i.bias_type in config.bias_types]
        if not items:
            raise DataError("no retention items for the chosen bias types")
        context.items["retention"] = items
        context.record("retention", config.retention_file or default_retention_path(),
                       len(items))

    def sentences(self, context: SuiteContext) -> Iterable[str]:
        return bias.sentences_to_score((), context.items["retention"])

    def run(self, context: SuiteContext) -> None:
        items, scores, kw = context.items["retention"], context.scores, context.bootstrap
        reference = context.reference.get("retention")
        section = {"ds": bias.differentiation_score(items, scores, **kw).to_dict()}
        context.predictions["retention"] = bias.retention_predictions(items, scores)
        if reference:
            section["rs"] = bias.retention_score(items, scores, reference, **kw).to_dict()
            trained = set(context.config.retention_trained_ids or ())
            unseen = [i for i in items if i.id not in trained]
            if trained and unseen:
                section["rs_unseen"] = bias.retention_score(unseen, scores, reference,
                                                            **kw).to_dict()
        context.metrics["retention"] = section
