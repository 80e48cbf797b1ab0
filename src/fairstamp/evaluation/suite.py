"""One evaluation entry point: load the sets a suite needs, score every sentence once, compute
every metric, and return plain dictionaries (`metrics.json` and `predictions.json` content).

Accepts a model already in memory (like lm-evaluation-harness's `simple_evaluate`), so FAST and the
baselines evaluate edited models through exactly the same path.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairstamp import __version__
from fairstamp.data.items import BiasItem, RetentionItem
from fairstamp.data.locations import (
    DOWNSTREAM,
    GPT_PARAPHRASES,
    KNOWN_1000,
    WIKITEXT2_TEST,
    data_root,
    require,
)
from fairstamp.errors import DataError
from fairstamp.evaluation.config import EvalConfig
from fairstamp.scoring import Scorer
from fairstamp.utils.io import sha256_file
from fairstamp.utils.repro import library_versions

log = logging.getLogger(__name__)

# StereoSet names race "race"; CrowS-Pairs names it "race-color".
_CROWS_TYPE = {"race": "race-color"}


@dataclass
class Evaluation:
    """What `evaluate` returns: `metrics` (→ metrics.json) and `predictions` (→ predictions.json),
    plus the loaded StereoSet items for exports."""

    metrics: dict[str, Any]
    predictions: dict[str, Any]
    items: dict[str, list] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def _record(data: dict, name: str, path: str | Path | None, n: int,
            unit: str = "records") -> None:
    entry: dict[str, Any] = {"n": n, "unit": unit, "path": str(path) if path else "built-in"}
    entry["sha256"] = sha256_file(path) if path and Path(path).is_file() else "-"
    data[name] = entry


def load_reference(reference: str | Path | None) -> dict[str, Any]:
    """Predictions of an earlier run (a run folder or its predictions.json), for RS and kept."""
    if reference is None:
        return {}
    path = Path(reference)
    if path.is_dir():
        path = path / "predictions.json"
    if not path.is_file():
        raise DataError(f"{path}: no predictions.json to compare with (--reference)")
    return json.loads(path.read_text())


def evaluate(loaded: Any, config: EvalConfig, *, progress: bool | None = None,
             max_batch_tokens: int | None = None,
             reference_predictions: dict[str, Any] | None = None,
             bias_items: list[BiasItem] | None = None,
             lower_cache: Any = None) -> Evaluation:
    """Run `config.suite` on an already-loaded model (`fairstamp.models.LoadedModel`).

    `reference_predictions` (an earlier Evaluation's `predictions`, e.g. of the unedited model)
    takes the place of `config.reference` for RS and known_1000 "kept". `bias_items`, already
    loaded (e.g. by `fairstamp debias`), take the place of the StereoSet / bias-file items.
    `lower_cache` (a `fairstamp.scoring.scorer.LowerLayerCache`) records, or replays, the layers
    below a stamp."""
    from fairstamp.data.bias_file import load_bias_file
    from fairstamp.data.crows import default_crows_path, load_crows_pairs
    from fairstamp.data.paraphrases import attach_paraphrases, load_paraphrase_file
    from fairstamp.data.retention import default_retention_path, load_retention
    from fairstamp.data.splits import split_by_target
    from fairstamp.data.stereoset import default_stereoset_path, load_stereoset
    from fairstamp.data.validate import select
    from fairstamp.metrics import bias

    start = time.perf_counter()
    parts = set(config.parts)
    root = data_root(config.data_dir)
    reference = (reference_predictions if reference_predictions is not None
                 else load_reference(config.reference))
    scorer = Scorer.from_loaded(loaded, progress=progress, max_batch_tokens=max_batch_tokens,
                                lower_cache=lower_cache)
    data: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    kw = {"n_resamples": config.n_resamples, "seed": config.seed}

    given_items, bias_items = bias_items, []
    if parts & {"stereoset", "paraphrase", "held_out"}:
        if given_items is not None:
            bias_items = list(given_items)
            _record(data, "bias_items", None, len(bias_items))
        elif config.bias_file:
            types = frozenset(config.bias_types) if config.bias_types else None
            bias_items = select(load_bias_file(config.bias_file), config.bias_file,
                                bias_types=types, limit=config.limit)
            _record(data, "bias_file", config.bias_file, len(bias_items))
        else:
            bias_items = load_stereoset(config.stereoset_file, bias_types=config.bias_types,
                                        limit=config.limit)
            _record(data, "stereoset", config.stereoset_file or default_stereoset_path(),
                    len(bias_items))
        if "paraphrase" in parts:
            para_path = config.paraphrase_file
            if para_path is None and root is not None and (root / GPT_PARAPHRASES).is_file():
                para_path = root / GPT_PARAPHRASES
            mapping = load_paraphrase_file(para_path) if para_path else {}
            bias_items = attach_paraphrases(bias_items, mapping,
                                            rule_fallback=config.rule_paraphrases)
            _record(data, "paraphrases", para_path,
                    sum(len(i.paraphrases) for i in bias_items), unit="pairs")
    crows_items: list[BiasItem] = []
    if "crows" in parts:
        crows_types = None
        if config.bias_types:
            crows_types = [_CROWS_TYPE.get(t, t) for t in config.bias_types
                           if t != "profession"]
            if not crows_types:
                raise DataError("CrowS-Pairs has no 'profession' bias type; choose others with "
                                "--bias-types or another suite")
        crows_items = load_crows_pairs(config.crows_file, bias_types=crows_types,
                                       limit=config.limit)
        _record(data, "crows_pairs", config.crows_file or default_crows_path(), len(crows_items))
    retention_items: list[RetentionItem] = []
    if "retention" in parts:
        retention_items = load_retention(config.retention_file)
        if config.bias_types:
            retention_items = [i for i in retention_items if i.bias_type in config.bias_types]
        if not retention_items:
            raise DataError("no retention items for the chosen bias types")
        _record(data, "retention", config.retention_file or default_retention_path(),
                len(retention_items))

    # Every sentence any metric needs, scored once.
    sentences = bias.sentences_to_score([*bias_items, *crows_items], retention_items,
                                        paraphrases="paraphrase" in parts)
    scores: dict[str, float] = {}
    if sentences:
        result = scorer.score(sentences, description=f"scoring {len(sentences)} sentences")
        scores = dict(zip(sentences, result.by(config.reduction).tolist()))

    if "stereoset" in parts:
        section: dict[str, Any] = {"ss": bias.stereotype_score(bias_items, scores, **kw).to_dict()}
        if all(i.unrelated is not None for i in bias_items):
            official = bias.stereoset_scores(bias_items, scores, **kw)
            section.update({"ss_macro": official.ss.to_dict(), "lms": official.lms.to_dict(),
                            "icat": official.icat.to_dict(),
                            "lms_micro": bias.language_modeling_score(bias_items, scores,
                                                                      **kw).to_dict()})
            metrics["per_target"] = bias.stereoset_per_target(bias_items, scores)
        metrics["stereoset"] = section
    if "paraphrase" in parts and any(i.paraphrases for i in bias_items):
        metrics["paraphrase"] = {
            "ps": bias.paraphrase_stereotype_score(bias_items, scores, **kw).to_dict()}
    edited_ids = set(config.edited_ids or ())
    if edited_ids and parts & {"stereoset", "paraphrase"}:
        edited = [i for i in bias_items if i.id in edited_ids]
        if not edited:
            raise DataError("none of the stamp's edited items is in the evaluated bias set")
        section = {"ss": bias.stereotype_score(edited, scores, **kw).to_dict(),
                   "n_items": len(edited), "n_edited_ids": len(edited_ids)}
        if "paraphrase" in parts and any(i.paraphrases for i in edited):
            section["ps"] = bias.paraphrase_stereotype_score(edited, scores, **kw).to_dict()
        metrics["edited"] = section
    if "held_out" in parts:
        if edited_ids:
            touched = {(i.bias_type, i.target) for i in bias_items if i.id in edited_ids}
            held_out = [i for i in bias_items if (i.bias_type, i.target) not in touched]
        else:
            _, held_out = split_by_target(bias_items, held_out_fraction=config.held_out_fraction,
                                          seed=config.seed)
        if held_out:
            metrics["held_out"] = {
                "ss": bias.stereotype_score(held_out, scores, **kw).to_dict(),
                "n_targets": len({(i.bias_type, i.target) for i in held_out}),
            }
    if "crows" in parts:
        metrics["crows"] = {"crows": bias.crows_pairs_score(crows_items, scores, **kw).to_dict()}
    if "retention" in parts:
        section = {"ds": bias.differentiation_score(retention_items, scores, **kw).to_dict()}
        predictions["retention"] = bias.retention_predictions(retention_items, scores)
        if reference.get("retention"):
            section["rs"] = bias.retention_score(retention_items, scores,
                                                 reference["retention"], **kw).to_dict()
            trained = set(config.retention_trained_ids or ())
            unseen = [i for i in retention_items if i.id not in trained]
            if trained and unseen:
                section["rs_unseen"] = bias.retention_score(unseen, scores,
                                                            reference["retention"], **kw).to_dict()
        metrics["retention"] = section
    if "general" in parts:
        metrics["general"] = _general(scorer, config, root, reference, predictions, data)

    return Evaluation(
        metrics={
            "fairstamp_version": __version__,
            "model": {"name": loaded.name, "family": loaded.arch.family, "source": loaded.source,
                      "path": loaded.path, **{k: v for k, v in loaded.info.items()
                                              if k in ("num_layers", "gguf_sha256", "upstream")}},
            "config": config.to_dict(),
            "scoring": {**scorer.describe(), "reduction": config.reduction,
                        "sentences_scored": len(sentences)},
            "data": data,
            "metrics": metrics,
            "versions": library_versions(),
            "timing": {"seconds": time.perf_counter() - start,
                       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        },
        predictions=predictions,
        items={"stereoset": bias_items, "crows": crows_items, "retention": retention_items},
        scores=scores,
    )


def _general(scorer: Scorer, config: EvalConfig, root: Path | None, reference: dict,
             predictions: dict, data: dict) -> dict[str, Any]:
    from fairstamp.data import general as gdata
    from fairstamp.metrics import general as gmetrics

    out: dict[str, Any] = {}
    wiki = require(root, WIKITEXT2_TEST / gdata.WIKITEXT2_TEST_NAME, "WikiText-2 perplexity")
    text = gdata.load_wikitext2_test(wiki)
    _record(data, "wikitext2_test", wiki, _limit(config, "wikitext2") or 0,
            unit="tokens at most (0: all)")
    window = min(gmetrics.DEFAULT_WINDOW, scorer.max_length or gmetrics.DEFAULT_WINDOW)
    stride = gmetrics.DEFAULT_STRIDE if window == gmetrics.DEFAULT_WINDOW else 3 * window // 4
    out["perplexity"] = gmetrics.perplexity(
        scorer, text, window=window, stride=stride,
        max_tokens=_limit(config, "wikitext2"),
        seed=config.seed, n_resamples=config.n_resamples).to_dict()
    known_path = require(root, KNOWN_1000, "known_1000 fact retention")
    facts = gdata.load_known_facts(known_path)
    limit = _limit(config, "known_1000")
    facts = facts[:limit] if limit else facts
    _record(data, "known_1000", known_path, len(facts))
    ref_top1 = reference.get("known_1000_top1")
    known = gmetrics.known_facts(scorer, facts, reference=ref_top1, seed=config.seed,
                                 n_resamples=config.n_resamples)
    predictions["known_1000_top1"] = known["top1"]
    out["known_1000"] = {k: v.to_dict() for k, v in known.items() if k != "top1"}
    out["downstream"] = {}
    for task in gdata.TASK_FORMATS:
        path = require(root, DOWNSTREAM / f"{task}.jsonl", f"{task} accuracy")
        items = gdata.load_multiple_choice(path, task, limit=_limit(config, task))
        _record(data, task, path, len(items))
        result = gmetrics.multiple_choice_accuracy(scorer, items, seed=config.seed,
                                                   n_resamples=config.n_resamples)
        out["downstream"][task] = {"acc": result["acc"].to_dict(),
                                   "acc_norm": result["acc_norm"].to_dict(), "n": result["n"]}
        predictions.setdefault("downstream", {})[task] = result["predictions"]
    return out


def _limit(config: EvalConfig, name: str) -> int | None:
    """The subset size of one general-ability set: the user's (0 = all) or the default."""
    from fairstamp.metrics.general import DEFAULT_LIMITS

    return config.general_limits.get(name, DEFAULT_LIMITS[name]) or None
