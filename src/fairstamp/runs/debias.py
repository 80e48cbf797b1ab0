"""FAST end to end: load the items, locate the decisive layer, evaluate, train the stamp, evaluate
again, and write everything to one run folder (what `fairstamp debias` does).

Run folder layout (written atomically; also a stamp folder that `--stamp` accepts):

    stamp_config.json, stamp.safetensors   the stamp
    edited_items.json                      ids (and bias type, target) of the items trained on
    retention_trained.json                 ids of the retention items the L_s1 term saw
    trace.json                             the bias trace that chose the layer (if traced)
    before/, after/                        metrics.json + predictions.json of each evaluation
    metrics.json                           configuration, fit summary, before and after
    report.md, plots/                      before/after table and charts
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fairstamp import __version__
from fairstamp.data.items import BiasItem
from fairstamp.data.locations import data_root
from fairstamp.errors import DataError, FairstampError
from fairstamp.evaluation.config import EvalConfig
from fairstamp.evaluation.suite import Evaluation, evaluate
from fairstamp.fast.train import FitConfig, FitResult, fit_stamp
from fairstamp.scoring.scorer import LowerLayerCache
from fairstamp.utils.io import atomic_write_json, atomic_write_text, staging_dir
from fairstamp.utils.repro import library_versions, seed_everything

log = logging.getLogger(__name__)

#: How the stamp's layer is picked (docs/fast.md has the layer sweep behind the default):
#: "argmax" / "argmax-after-first": the traced decisive layer (SPEC §4.1), with or without layer
#: 0; "two-thirds": layer round(2/3 · number of layers), which gave the best SS/RS trade-off in the
#: sweep on smollm2-135m (the trace is still run and reported).
LAYER_RULES = ("two-thirds", "argmax-after-first", "argmax")
DEFAULT_LAYER_RULE = "two-thirds"
EDITED_ITEMS = "edited_items.json"
RETENTION_TRAINED = "retention_trained.json"


@dataclass
class DebiasConfig:
    """Options of `fairstamp debias` (recorded in its metrics.json)."""

    model: str
    data: str = "stereoset"  # as `load_bias_set`; CrowS-Pairs needs allow_crows_training
    bias_types: list[str] | None = None
    limit: int | None = None
    held_out_fraction: float = 0.2
    seed: int = 0
    layer: int | None = None
    layer_rule: str = DEFAULT_LAYER_RULE
    trace_items: int = 40
    trace_samples: int = 5
    n_generic: int = 200  # generic sentences (L_s2)
    n_passages: int = 32  # generic passages (L_s2)
    passage_words: int = 300
    suite: str = "all"
    general_limits: dict[str, int] = field(default_factory=dict)
    n_resamples: int = 1000
    data_dir: str | None = None
    allow_crows_training: bool = False
    reuse_lower: bool = True  # the after-evaluation replays the layers below the stamp
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        if self.layer_rule not in LAYER_RULES:
            raise FairstampError(f"unknown layer rule {self.layer_rule!r}; choose from "
                                 f"{', '.join(LAYER_RULES)}")
        if (self.data == "crows" or self.data.endswith(".csv")) and not self.allow_crows_training:
            raise FairstampError(
                "CrowS-Pairs' data statement asks that it not be used to train models; pass "
                "--allow-crows-training to edit on it anyway (the report records it)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DebiasResult:
    config: DebiasConfig
    fit: FitResult
    layer: int
    edited: list[BiasItem]
    retention_trained: list[str]
    before: Evaluation
    after: Evaluation
    trace: Any = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def stamp(self):
        return self.fit.stamp

    def metrics(self) -> dict[str, Any]:
        return {
            "fairstamp_version": __version__,
            "kind": "debias",
            "model": self.before.metrics["model"],
            "config": self.config.to_dict(),
            "layer": self.layer,
            "layer_source": "given" if self.config.layer is not None else
            f"rule {self.config.layer_rule}",
            "stamp": {"width": self.stamp.config.width,
                      "parameters": self.stamp.num_parameters(),
                      "reads": self.stamp.config.reads,
                      "fingerprint": self.stamp.config.fingerprint},
            "fit": self.fit.summary(),
            "history": self.fit.history,
            "n_edited": len(self.edited),
            "crows_training": any(i.source == "crows_pairs" for i in self.edited),
            "before": self.before.metrics,
            "after": self.after.metrics,
            "timing": self.seconds,
            "versions": library_versions(),
        }


@dataclass
class EditSetup:
    """The items, split, training text and evaluation settings of one editing run (shared by
    `debias` and `fairstamp bench`, so every method sees the same)."""

    items: list[BiasItem]
    edit: list[BiasItem]
    held_out: list[BiasItem]
    retention_sentences: list[str]
    generic_sentences: list[str]
    generic_passages: list[str]
    retention_trained: list[Any]
    data_root: Path
    eval_config: EvalConfig


def prepare_edit(config: Any) -> EditSetup:
    """Load and split the bias items and the training text named by `config` (a DebiasConfig or
    anything with the same fields: model, data, bias_types, limit, held_out_fraction, seed,
    data_dir, n_generic, n_passages, passage_words, suite, general_limits, n_resamples)."""
    from fairstamp.data.bias_sets import load_bias_set
    from fairstamp.data.splits import split_by_target
    from fairstamp.data.training_text import training_text

    root = data_root(config.data_dir)
    if root is None:
        raise DataError("editing needs the public data folder (WikiText-2, paraphrases): "
                        "pass --data-dir or set $FAIRSTAMP_DATA")
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
        general_limits=dict(config.general_limits), edited_ids=[i.id for i in edit],
        retention_trained_ids=[r.id for r in trained_retention])
    return EditSetup(items=items, edit=edit, held_out=held_out,
                     retention_sentences=text.retention_sentences,
                     generic_sentences=text.generic_sentences,
                     generic_passages=text.generic_passages,
                     retention_trained=trained_retention, data_root=Path(root),
                     eval_config=eval_config)


def pick_layer(trace: Any, rule: str, num_layers: int) -> int:
    if rule == "two-thirds":
        return min(num_layers - 1, round(2 * num_layers / 3))
    return trace.decisive_layer("mlp", exclude_first=rule == "argmax-after-first")


def debias(loaded: Any, config: DebiasConfig, *, progress: bool | None = None,
           max_batch_tokens: int | None = None) -> DebiasResult:
    """The whole FAST job on a loaded model; the stamp stays attached to it afterwards."""
    seed_everything(config.seed)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    setup = prepare_edit(config)
    edit, items = setup.edit, setup.items

    trace = None
    layer = config.layer
    if layer is None:
        from fairstamp.tracing import trace_bias

        trace = trace_bias(loaded, edit[: config.trace_items], components=("mlp",),
                           samples=config.trace_samples, seed=config.seed, heatmap_items=0,
                           progress=progress)
        layer = pick_layer(trace, config.layer_rule, loaded.arch.num_layers(loaded.model))
        log.info("stamp layer %d (rule %s); traced MLP layers by effect: %s", layer,
                 config.layer_rule, trace.ranked_layers("mlp")[:5])
    seconds["trace"] = time.perf_counter() - clock
    eval_config = setup.eval_config
    retention_text, generic = setup.retention_sentences, setup.generic_sentences
    trained_retention = setup.retention_trained
    # The stamp sits in layer `layer`: the layers below it compute the same before and after, so
    # the second evaluation replays what the first recorded there.
    lower = LowerLayerCache(loaded.model, loaded.arch, layer) if config.reuse_lower else None
    clock = time.perf_counter()
    before = evaluate(loaded, eval_config, progress=progress, bias_items=items,
                      max_batch_tokens=max_batch_tokens, lower_cache=lower)
    seconds["evaluate_before"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fit = fit_stamp(loaded, edit, layer, retention_sentences=retention_text,
                    generic_sentences=generic, generic_passages=setup.generic_passages,
                    config=config.fit, progress=progress)
    seconds["fit"] = time.perf_counter() - clock

    clock = time.perf_counter()
    after = evaluate(loaded, eval_config, progress=progress, bias_items=items,
                     reference_predictions=before.predictions, max_batch_tokens=max_batch_tokens,
                     lower_cache=lower.replay() if lower is not None else None)
    seconds["evaluate_after"] = time.perf_counter() - clock
    if lower is not None:
        log.info("after-evaluation: %d forward passes replayed layers 0..%d from the first "
                 "evaluation, %d ran in full", lower.replayed, layer - 1, lower.recomputed)
        lower.states.clear()
    return DebiasResult(config=config, fit=fit, layer=layer, edited=edit,
                        retention_trained=[r.id for r in trained_retention], before=before,
                        after=after, trace=trace, seconds=seconds)


def write_debias_run(result: DebiasResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """The run folder (layout in the module docstring), all or nothing."""
    from fairstamp.reporting.before_after import before_after_plots, before_after_report
    from fairstamp.stamp.artefact import write_stamp_files

    out = Path(out)
    metrics = result.metrics()
    with staging_dir(out, overwrite=overwrite) as stage:
        write_stamp_files(stage, result.stamp)
        atomic_write_json(stage / EDITED_ITEMS, [
            {"id": i.id, "bias_type": i.bias_type, "target": i.target} for i in result.edited])
        atomic_write_json(stage / RETENTION_TRAINED, result.retention_trained)
        if result.trace is not None:
            atomic_write_json(stage / "trace.json", result.trace.to_dict())
        for name, evaluation in (("before", result.before), ("after", result.after)):
            atomic_write_json(stage / name / "metrics.json", evaluation.metrics)
            atomic_write_json(stage / name / "predictions.json", evaluation.predictions)
        atomic_write_json(stage / "metrics.json", metrics)
        plots = before_after_plots(metrics, stage / "plots", trace=result.trace)
        atomic_write_text(stage / "report.md", before_after_report(metrics, plots))
    log.info("wrote %s", out)
    return out


def read_edited_ids(folder: str | Path) -> tuple[list[str] | None, list[str] | None]:
    """(edited item ids, retention ids trained on) recorded in a debias run / stamp folder."""
    import json

    folder = Path(folder)
    edited = retention = None
    if (folder / EDITED_ITEMS).is_file():
        edited = [e["id"] for e in json.loads((folder / EDITED_ITEMS).read_text())]
    if (folder / RETENTION_TRAINED).is_file():
        retention = list(json.loads((folder / RETENTION_TRAINED).read_text()))
    return edited, retention
