"""General ability: WikiText-2 perplexity, known_1000 top-1 facts and downstream accuracy.

Not sentence scores: this part runs the Scorer itself, after the suite's shared pass.
"""

from __future__ import annotations

from typing import Any

from fairstamp.data import general as gdata
from fairstamp.data.locations import DOWNSTREAM, KNOWN_1000, WIKITEXT2_TEST, require
from fairstamp.evaluation.config import EvalConfig
from fairstamp.evaluation.registry import SuiteContext, SuitePart, register_part
from fairstamp.metrics import general as gmetrics


def subset_limit(config: EvalConfig, name: str) -> int | None:
    """The subset size of one general-ability set: the user's (0 = all) or the default."""
    return config.general_limits.get(name, gmetrics.DEFAULT_LIMITS[name]) or None


@register_part("general")
class GeneralPart(SuitePart):
    def load(self, context: SuiteContext) -> None:
        config, root = context.config, context.root
        wiki = require(root, WIKITEXT2_TEST / gdata.WIKITEXT2_TEST_NAME, "WikiText-2 perplexity")
        self.text = gdata.load_wikitext2_test(wiki)
        context.record("wikitext2_test", wiki, subset_limit(config, "wikitext2") or 0,
                       unit="tokens at most (0: all)")
        known_path = require(root, KNOWN_1000, "known_1000 fact retention")
        facts = gdata.load_known_facts(known_path)
        limit = subset_limit(config, "known_1000")
        self.facts = facts[:limit] if limit else facts
        context.record("known_1000", known_path, len(self.facts))
        self.tasks: dict[str, list] = {}
        for task in gdata.TASK_FORMATS:
            path = require(root, DOWNSTREAM / f"{task}.jsonl", f"{task} accuracy")
            self.tasks[task] = gdata.load_multiple_choice(path, task,
                                                          limit=subset_limit(config, task))
            context.record(task, path, len(self.tasks[task]))

    def run(self, context: SuiteContext) -> None:
        config, scorer, predictions = context.config, context.scorer, context.predictions
        kw = context.bootstrap
        out: dict[str, Any] = {}
        window = min(gmetrics.DEFAULT_WINDOW, scorer.max_length or gmetrics.DEFAULT_WINDOW)
        stride = gmetrics.DEFAULT_STRIDE if window == gmetrics.DEFAULT_WINDOW else 3 * window // 4
        out["perplexity"] = gmetrics.perplexity(
            scorer, self.text, window=window, stride=stride,
            max_tokens=subset_limit(config, "wikitext2"), **kw).to_dict()
        known = gmetrics.known_facts(scorer, self.facts,
                                     reference=context.reference.get("known_1000_top1"), **kw)
        predictions["known_1000_top1"] = known["top1"]
        out["known_1000"] = {k: v.to_dict() for k, v in known.items()
                             if k not in ("top1", "changed")}
        if "changed" in known:
            out["known_1000"]["changed"] = known["changed"]
        out["downstream"] = {}
        for task, items in self.tasks.items():
            result = gmetrics.multiple_choice_accuracy(scorer, items, **kw)
            out["downstream"][task] = {"acc": result["acc"].to_dict(),
                                       "acc_norm": result["acc_norm"].to_dict(), "n": result["n"]}
            predictions.setdefault("downstream", {})[task] = result["predictions"]
        context.metrics["general"] = out
