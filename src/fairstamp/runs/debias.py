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

Under `accelerate launch` (several processes) the two evaluations are sharded over the processes
(`evaluate`); the trace and the stamp's training are not: every process runs them whole, with
the same seed (on a CPU every process trains the same stamp, bit for bit), and the main
process's stamp is then given to all, so that the evaluation after is of the stamp the main
process writes. The cross-validation (`folds`) runs on the main process alone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fairstamp import __version__
from fairstamp.data.items import BiasItem
from fairstamp.evaluation.suite import Evaluation, evaluate
from fairstamp.fast.recipes import counterfactual_weight_for, sign_weight_for
from fairstamp.fast.train import FitConfig, FitResult, fit_stamp
from fairstamp.methods.fast import FastMethod
from fairstamp.reporting.before_after import before_after_plots, before_after_report
from fairstamp.reporting.run_folder import run_folder
from fairstamp.runs.config import (
    QUICK_MAX_STEPS,
    EditRunConfig,
    check_given_layer,
    choose_layer,
)
from fairstamp.runs.folds import cross_validate
from fairstamp.runs.setup import EditSetup, prepare_edit
from fairstamp.scoring.scorer import LowerLayerCache
from fairstamp.stamp.artefact import write_stamp_files
from fairstamp.tracing import trace_bias
from fairstamp.utils.distributed import current_processes
from fairstamp.utils.repro import library_versions, seed_everything

log = logging.getLogger(__name__)

EDITED_ITEMS = "edited_items.json"
RETENTION_TRAINED = "retention_trained.json"


@dataclass
class DebiasConfig(EditRunConfig):
    """Options of `fairstamp debias` (recorded in its metrics.json): the edit run's, the
    stamp's training (`fit`), and whether the second evaluation replays the layers below the
    stamp from the first (same numbers, less work)."""

    reuse_lower: bool = True
    fit: FitConfig = field(default_factory=FitConfig)

    def quick(self) -> DebiasConfig:
        """`--quick`: the edit run's small suite and trace, and QUICK_MAX_STEPS steps where the
        length is automatic (explicit limits win, as the suites' do)."""
        quick = super().quick()
        steps = self.fit.max_steps or QUICK_MAX_STEPS
        return replace(quick, fit=replace(self.fit, max_steps=steps))


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
    layer_source: str = "given"
    cross_validation: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def stamp(self):
        return self.fit.stamp

    @property
    def edited_types(self) -> list[str]:
        return [i.bias_type for i in self.edited]

    def metrics(self) -> dict[str, Any]:
        return {
            "fairstamp_version": __version__,
            "kind": "debias",
            "model": self.before.metrics["model"],
            "config": self.config.to_dict(),
            "layer": self.layer,
            "layer_source": self.layer_source,
            # λ and δ as trained (the config's None: fairstamp.fast.recipes)
            "sign_weight": self.stamp.config.training["sign_weight"],
            "sign_weight_source": sign_weight_for(self.config.fit.sign_weight,
                                                  self.before.metrics["model"]["name"],
                                                  self.edited_types)[1],
            "counterfactual_weight_source": counterfactual_weight_for(
                self.config.fit.counterfactual_weight, self.edited_types,
                asked=self.config.fit.counterfactual_asked)[1],
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
            **({"cross_validation": self.cross_validation} if self.cross_validation else {}),
            "timing": self.seconds,
            "versions": library_versions(),
        }


def edit_layer(loaded: Any, config: EditRunConfig, setup: EditSetup, *,
               progress: bool | None = None) -> tuple[int, str, Any]:
    """(layer, how it was chosen, the bias trace or None) of an edit run on a loaded model: the
    edit side's first `trace_items` items are traced when the run traces."""
    trace = None
    if config.traces:
        trace = trace_bias(loaded, setup.edit[: config.trace_items], components=("mlp",),
                           samples=config.trace_samples, seed=config.seed, heatmap_items=0,
                           progress=progress)
    layer, source = choose_layer(config, loaded.num_layers, loaded.name, trace)
    if trace is not None:
        log.info("stamp layer %d (%s); traced MLP layers by effect: %s", layer, source,
                 trace.ranked_layers("mlp")[:5])
    return layer, source, trace


def debias(loaded: Any, config: DebiasConfig, *, progress: bool | None = None,
           max_batch_tokens: int | None = None) -> DebiasResult:
    """The whole FAST job on a loaded model; the stamp stays attached to it afterwards."""
    check_given_layer(config, loaded.num_layers, loaded.name)
    seed_everything(config.seed)
    processes = current_processes()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    setup = prepare_edit(config)
    layer, layer_source, trace = edit_layer(loaded, config, setup, progress=progress)
    seconds["trace"] = time.perf_counter() - clock
    # The stamp sits in layer `layer`: the layers below it compute the same before and after, so
    # the second evaluation replays what the first recorded there.
    lower = LowerLayerCache(loaded.model, loaded.arch, layer) if config.reuse_lower else None
    clock = time.perf_counter()
    before = evaluate(loaded, setup.eval_config, progress=progress, bias_items=setup.items,
                      max_batch_tokens=max_batch_tokens, lower_cache=lower, processes=processes)
    seconds["evaluate_before"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fit = fit_stamp(loaded, setup.edit, layer, retention_sentences=setup.retention_sentences,
                    generic_sentences=setup.generic_sentences,
                    generic_passages=setup.generic_passages,
                    group_swap=setup.swap_for(setup.edit),
                    config=config.fit,
                    progress=progress)
    seconds["fit"] = time.perf_counter() - clock
    change = processes.broadcast_parameters(fit.stamp.module)  # the main process's stamp
    if change:
        log.warning("process %d trained a stamp up to %.3g away from the main process's (not "
                    "deterministic here); it evaluates the main process's", processes.index,
                    change)

    clock = time.perf_counter()
    after = evaluate(loaded, setup.eval_config, progress=progress, bias_items=setup.items,
                     reference_predictions=before.predictions, max_batch_tokens=max_batch_tokens,
                     lower_cache=lower.replay() if lower is not None else None,
                     processes=processes)
    seconds["evaluate_after"] = time.perf_counter() - clock
    if lower is not None:
        log.info("after-evaluation: %d forward passes replayed layers 0..%d from the first "
                 "evaluation, %d ran in full", lower.replayed, layer - 1, lower.recomputed)
        lower.states.clear()
    cv = None
    if config.folds > 1 and processes.is_main:
        clock = time.perf_counter()
        fit.stamp.detach_from(loaded)  # the folds' stamps are fitted on the original model
        try:
            cv = cross_validate(
                loaded, setup.items,
                lambda items: setup.context(loaded, layer, seed=config.seed, progress=progress,
                                            items=items),
                FastMethod(config.fit).fit, folds=config.folds, seed=config.seed,
                n_resamples=config.n_resamples, max_batch_tokens=max_batch_tokens,
                progress=progress, monitor=True)
        finally:
            fit.stamp.attach_to(loaded)
        seconds["cross_validation"] = time.perf_counter() - clock
    return DebiasResult(config=config, fit=fit, layer=layer, edited=setup.edit,
                        retention_trained=[r.id for r in setup.retention_trained],
                        before=before, after=after, trace=trace, layer_source=layer_source,
                        cross_validation=cv, seconds=seconds)


def write_debias_run(result: DebiasResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """The run folder (layout in the module docstring), all or nothing."""
    metrics = result.metrics()
    with run_folder(out, overwrite=overwrite) as folder:
        write_stamp_files(folder.path, result.stamp)
        folder.json(EDITED_ITEMS, [{"id": i.id, "bias_type": i.bias_type, "target": i.target}
                                   for i in result.edited])
        folder.json(RETENTION_TRAINED, result.retention_trained)
        if result.trace is not None:
            folder.json("trace.json", result.trace.to_dict())
        for name, evaluation in (("before", result.before), ("after", result.after)):
            folder.evaluation(name, evaluation.metrics, evaluation.predictions)
        folder.json("metrics.json", metrics)
        folder.report(metrics, before_after_report,
                      lambda m, plots: before_after_plots(m, plots, trace=result.trace))
    return Path(out)


def read_edited_ids(folder: str | Path) -> tuple[list[str] | None, list[str] | None]:
    """(edited item ids, retention ids trained on) recorded in a debias run / stamp folder."""
    folder = Path(folder)
    edited = retention = None
    if (folder / EDITED_ITEMS).is_file():
        edited = [e["id"] for e in json.loads((folder / EDITED_ITEMS).read_text())]
    if (folder / RETENTION_TRAINED).is_file():
        retention = list(json.loads((folder / RETENTION_TRAINED).read_text()))
    return edited, retention
