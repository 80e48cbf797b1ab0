"""Cross-validation by target: how well an edit carries over to groups it never saw.

The items' targets are dealt into K folds, per bias type (every fold holds about 1/K of each bias
type's targets). For each fold, a method is fitted on the items of the other folds' targets and
the items of this fold's targets are scored; the edit is then taken off. Every target is held out
exactly once, so the pooled held-out scores cover every item, and "before" is the original model
on the same items. SS and LMS are pooled over all items with bootstrap CIs, overall and per bias
type, and the change of SS with a paired bootstrap CI (items resampled with both of their
scores). The layer, training text and seed are the edit run's own; only the items change. Cost: K
fits plus one scoring pass over the items per fold (docs/fast.md, "Cross-validation by target").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fairstamp.data.items import BiasItem
from fairstamp.data.splits import hashed_order, target_key, targets_by_type
from fairstamp.errors import DataError, FairstampError
from fairstamp.methods.base import Edit, EditContext
from fairstamp.metrics.bias import (
    language_modeling_score,
    sentences_to_score,
    stereotype_score,
    stereotype_score_change,
)
from fairstamp.scoring import Scorer
from fairstamp.utils.repro import seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    """One finished fold: its record (as in `per_fold`) and its held-out sentences' scores."""

    record: dict[str, Any]
    scores: dict[str, float]


def target_folds(items: Sequence[BiasItem], k: int, *, seed: int = 0) -> list[int]:
    """The fold (0..k-1) of each item: each bias type's targets, in a seeded hash order, dealt
    round-robin, so a target's items stay together and the folds share every bias type."""
    if k < 2:
        raise FairstampError(f"cross-validation needs at least 2 folds, got {k}")
    fold_of: dict[tuple[str, str], int] = {}
    for bias_type, keys in targets_by_type(items).items():
        if len(keys) < k:
            raise DataError(f"{bias_type} has {len(keys)} targets, fewer than {k} folds; lower "
                            f"--folds")
        order = hashed_order(keys, seed=seed)
        for position, key in enumerate(order):
            fold_of[key] = position % k
    return [fold_of[target_key(item)] for item in items]


def cross_validate(
    loaded: Any,
    items: Sequence[BiasItem],
    make_context: Callable[[list[BiasItem]], EditContext],
    fit: Callable[[EditContext], Edit],
    *,
    folds: int,
    seed: int = 0,
    n_resamples: int = 1000,
    max_batch_tokens: int | None = None,
    progress: bool | None = None,
    finished: Callable[[int], FoldResult | None] | None = None,
    on_fold: Callable[[int, FoldResult], None] | None = None,
    monitor: bool = False,
) -> dict[str, Any]:
    """Fit `fit` K times (each fold's targets held out) on the model in `loaded`, which is left
    as it was; returns the pooled held-out SS/LMS before and after, and each fold's record.
    `make_context(edit_items)` gives the EditContext of a fold's edit side.

    Resuming: `on_fold(fold, result)` is called as each fold finishes (its record and held-out
    sentence scores), and `finished(fold)` may return such a result from an earlier run, which is
    then used instead of fitting (the fold's held-out targets must match). Every fold seeds
    itself, so a resumed run gives the numbers of an uninterrupted one. With `monitor` each
    fold's held-out items go to the method as `EditContext.monitor_items`: a method trained by
    the shared loop scores them at every check and records their SS in its summary's `checks`
    (a learning curve on unseen targets; nothing reads it to choose)."""
    items = list(items)
    fold_of = target_folds(items, folds, seed=seed)
    needed = sentences_to_score(items, paraphrases=False)
    scorer = Scorer.from_loaded(loaded, max_batch_tokens=max_batch_tokens, progress=progress)
    before = dict(zip(needed, scorer.score(needed, description="CV: original").mean.tolist()))
    after: dict[str, float] = {}
    records = []
    for fold in range(folds):
        edit_items = [it for it, f in zip(items, fold_of) if f != fold]
        held = [it for it, f in zip(items, fold_of) if f == fold]
        held_targets = sorted({f"{it.bias_type}:{it.target}" for it in held})
        earlier = finished(fold) if finished is not None else None
        if earlier is not None:
            if earlier.record.get("held_out_targets") != held_targets:
                raise FairstampError(
                    f"CV fold {fold + 1}: the stored fold held out "
                    f"{earlier.record.get('held_out_targets')}, this split holds out "
                    f"{held_targets}; remove the stored folds to start again")
            log.info("CV fold %d/%d: reused from an earlier run (%s)", fold + 1, folds,
                     ", ".join(held_targets))
            after.update(earlier.scores)
            records.append(earlier.record)
            continue
        log.info("CV fold %d/%d: fitting on %d items, holding out %d items (%s)", fold + 1,
                 folds, len(edit_items), len(held), ", ".join(held_targets))
        clock = time.perf_counter()
        seed_everything(seed)
        context = make_context(edit_items)
        if monitor:
            context = replace(context, monitor_items=held)
        edit = fit(context)
        try:
            fit_seconds = time.perf_counter() - clock
            sentences = sentences_to_score(held, paraphrases=False)
            scored = Scorer.from_loaded(loaded, max_batch_tokens=max_batch_tokens,
                                        progress=progress).score(
                sentences, description=f"CV fold {fold + 1}: held-out")
            fold_scores = dict(zip(sentences, scored.mean.tolist()))
            after.update(fold_scores)
        finally:
            edit.restore(loaded)
        fold_ss = stereotype_score(held, after, n_resamples=0, seed=seed).overall.value
        fold_before = stereotype_score(held, before, n_resamples=0, seed=seed).overall.value
        log.info("CV fold %d/%d: held-out SS %.1f (before %.1f) on %d items", fold + 1, folds,
                 fold_ss, fold_before, len(held))
        record = {"fold": fold, "held_out_targets": held_targets, "n_edit": len(edit_items),
                  "n_held_out": len(held), "fit_seconds": round(fit_seconds, 2),
                  "held_out_ss": fold_ss, "held_out_ss_before": fold_before,
                  "edit": edit.summary()}
        records.append(record)
        if on_fold is not None:
            on_fold(fold, FoldResult(record, fold_scores))
    return {
        "folds": folds,
        "n_items": len(items),
        "reduction": "mean",
        "before": _pooled(items, before, n_resamples, seed),
        "after": _pooled(items, after, n_resamples, seed),
        "change": {"ss": stereotype_score_change(items, before, after, n_resamples=n_resamples,
                                                 seed=seed).to_dict()},
        "per_fold": records,
    }


def _pooled(items: Sequence[BiasItem], scores: dict[str, float], n_resamples: int,
            seed: int) -> dict[str, Any]:
    out = {"ss": stereotype_score(items, scores, n_resamples=n_resamples, seed=seed).to_dict()}
    if all(it.unrelated is not None for it in items):
        out["lms"] = language_modeling_score(items, scores, n_resamples=n_resamples,
                                             seed=seed).to_dict()
    return out
