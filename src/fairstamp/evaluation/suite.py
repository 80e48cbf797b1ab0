"""One evaluation entry point: run the registered parts of a suite (`registry`), scoring every
sentence any part needs once, and return plain dictionaries (`metrics.json` and
`predictions.json` content).

Accepts a model already in memory (like lm-evaluation-harness's `simple_evaluate`), so FAST and the
baselines evaluate edited models through exactly the same path.

Started as several processes (`accelerate launch`, docs/biascope.md "Several processes"), every
process runs the same evaluation and the model work is sharded: the suite's Scorer deals its
forward passes out over the processes and gathers the results in order, and BOLD's generations
are dealt out by batch. Every process then holds the same results and computes the same metrics;
writing them is the caller's (the main process's) job.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairstamp import __version__
from fairstamp.data.items import BiasItem
from fairstamp.data.locations import data_root
from fairstamp.errors import DataError
from fairstamp.evaluation import parts as _builtin_parts  # noqa: F401 - they register on import
from fairstamp.evaluation.config import EvalConfig
from fairstamp.evaluation.registry import SuiteContext, get_part
from fairstamp.scoring import Scorer
from fairstamp.utils.distributed import Processes, current_processes
from fairstamp.utils.repro import library_versions

#: The item sets `Evaluation.items` always has (empty when the suite loads none).
ITEM_SETS = ("stereoset", "crows", "retention")


@dataclass
class Evaluation:
    """What `evaluate` returns: `metrics` (→ metrics.json) and `predictions` (→ predictions.json),
    plus the loaded StereoSet items for exports."""

    metrics: dict[str, Any]
    predictions: dict[str, Any]
    items: dict[str, list] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


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
             lower_cache: Any = None, processes: Processes | None = None) -> Evaluation:
    """Run `config.suite` on an already-loaded model (`fairstamp.models.LoadedModel`).

    `reference_predictions` (an earlier Evaluation's `predictions`, e.g. of the unedited model)
    takes the place of `config.reference` for RS and known_1000 "kept". `bias_items`, already
    loaded (e.g. by `fairstamp debias`), take the place of the StereoSet / bias-file items.
    `lower_cache` (a `fairstamp.scoring.scorer.LowerLayerCache`) records, or replays, the layers
    below a stamp. `processes` share the model work (default: those of `accelerate launch`, if
    any; else this process alone)."""
    start = time.perf_counter()
    processes = current_processes() if processes is None else processes
    processes.check_model(loaded.model)
    parts = [get_part(name)() for name in config.parts]
    root = data_root(config.data_dir)
    reference = (reference_predictions if reference_predictions is not None
                 else load_reference(config.reference))
    scorer = Scorer.from_loaded(loaded, progress=progress, max_batch_tokens=max_batch_tokens,
                                lower_cache=lower_cache, processes=processes)
    context = SuiteContext(loaded=loaded, config=config, scorer=scorer, root=root,
                           reference=reference, given_bias_items=bias_items)
    for part in parts:
        part.load(context)
    # Every sentence any part needs, scored once (first-seen order: the batches, hence every
    # float, depend on it).
    sentences = list(dict.fromkeys(s for part in parts for s in part.sentences(context)))
    if sentences:
        result = scorer.score(sentences, description=f"scoring {len(sentences)} sentences")
        context.scores = dict(zip(sentences, result.by(config.reduction).tolist()))
    for part in parts:
        part.run(context)

    return Evaluation(
        metrics={
            "fairstamp_version": __version__,
            "model": {"name": loaded.name, "family": loaded.arch.family, "source": loaded.source,
                      "path": loaded.path,
                      **{k: v for k, v in loaded.info.items()
                         if k in ("num_layers", "gguf_sha256", "upstream", "dtype", "device_map")}},
            "config": config.to_dict(),
            "scoring": {**scorer.describe(), "reduction": config.reduction,
                        "sentences_scored": len(sentences), "processes": processes.count},
            "data": context.data,
            "metrics": context.metrics,
            "versions": library_versions(),
            "timing": {"seconds": time.perf_counter() - start,
                       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        },
        predictions=context.predictions,
        items={**{name: [] for name in ITEM_SETS}, **context.items},
        scores=context.scores,
    )
