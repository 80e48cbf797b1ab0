"""Run methods side by side: evaluate the original once, then fit and evaluate each method.

Run folder (every part written atomically; a finished part is never recomputed, so an interrupted
run resumes where it stopped):

    bench_config.json                 the run's settings (a rerun must match them)
    original/                         metrics.json + predictions.json of the unedited model
    methods/<name>/                   metrics.json, predictions.json, result.json (fit seconds,
                                      peak memory, parameters changed, the method's summary),
                                      and the edit (edit.json + edit.safetensors, or the stamp)
    failed/<name>.json                why a method failed (retried on the next run)
    results.json, results.md, plots/  the table and the trade-off plots

By default each method runs in its own process (`python -m fairstamp.bench.worker`), so that its
peak memory is its own and a crash or an out-of-memory kill loses only that method.

Under `accelerate launch` (several processes) the bench must run in process (`--in-process`):
every process fits each method itself (fits are not sharded) and the evaluations are sharded
over the processes (`evaluate`); the main process alone writes the folder, runs the
cross-validation and writes the table, and the others wait for it after each method. A method
that fails stops the run there (a process that failed alone would leave the others waiting); the
same command resumes it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fairstamp.bench.folder import CONFIG_NAME, ORIGINAL, is_done, method_folder
from fairstamp.bench.table import write_results
from fairstamp.data.validate import max_sentence_tokens
from fairstamp.errors import FairstampError
from fairstamp.evaluation.suite import evaluate
from fairstamp.methods import Edit, EditContext, get_method, method_class
from fairstamp.models import load
from fairstamp.reporting.run_folder import run_folder
from fairstamp.runs.config import (
    UNTRACED_RULES,
    EditRunConfig,
    check_given_layer,
    choose_layer,
    default,
)
from fairstamp.runs.debias import edit_layer
from fairstamp.runs.folds import cross_validate
from fairstamp.runs.setup import EditSetup, prepare_edit
from fairstamp.utils.distributed import current_processes
from fairstamp.utils.io import atomic_write_json
from fairstamp.utils.repro import library_versions, seed_everything

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("fast", "ft", "rome", "memit", "cda", "inlp", "sentence_debias",
                   "self_debias")


@dataclass
class BenchConfig(EditRunConfig):
    """Settings of one `fairstamp bench` run: the edit run every method shares, the methods and
    their knobs, and where they run."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    cache_dir: str | None = None
    device: str | None = None
    max_batch_tokens: int | None = None
    # Per-method knobs: {"rome": {"v_num_grad_steps": "10"}, ...} (strings are read by type).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.uses_crows:
            raise FairstampError("CrowS-Pairs' data statement asks that it not be used to train "
                                 "models; bench on StereoSet or your own bias file (CrowS-Pairs "
                                 "is still evaluated by --suite all)")
        super().__post_init__()
        if not self.methods:
            raise FairstampError("no methods to run")
        for name in [*self.methods, *self.options]:
            method_class(name)  # unknown names fail here, with the list of known ones
        if len(set(self.methods)) != len(self.methods):
            raise FairstampError("a method is named twice")
        for name, settings in self.options.items():  # unknown knobs fail before any work
            get_method(name, **settings)

    def quick(self) -> BenchConfig:
        """The quick general suite; the trace shortened only when the layer rule traces."""
        quick = super().quick()
        if self.layer is not None or self.layer_rule in UNTRACED_RULES:
            quick = replace(quick, trace_items=self.trace_items,
                            trace_samples=self.trace_samples)
        return quick

    def shared(self) -> dict[str, Any]:
        """What must not change between the runs that fill one folder (methods may be added)."""
        out = self.to_dict()
        # Where the model runs does not change the numbers beyond float noise; its dtype does.
        for key in ("methods", "options", "device", "max_batch_tokens", "cache_dir",
                    "device_map", "max_memory", "offload_folder"):
            out.pop(key)
        return out


def run_bench(config: BenchConfig, out: str | Path, *, isolate: bool = True,
              progress: bool | None = None) -> dict[str, Any]:
    """Evaluate the original and every method into `out` (resuming a started run) and write the
    results table; returns results.json's content (under `accelerate launch`: on the main
    process; the others return {})."""
    out = Path(out)
    processes = current_processes()
    if processes.sharded and isolate:
        raise FairstampError(f"fairstamp bench under {processes.count} processes needs "
                             f"--in-process: its worker processes cannot share the launch")
    if processes.is_main:
        _check_or_write_config(config, out)
    processes.wait()
    if not processes.is_main:
        _check_or_write_config(config, out, write=False)
    names = [ORIGINAL, *config.methods]
    for position, name in enumerate(names):
        if is_done(out, name):
            log.info("[%d/%d] %s: done earlier, kept", position + 1, len(names), name)
            continue
        log.info("[%d/%d] %s: %s", position + 1, len(names), name,
                 "evaluating the original model" if name == ORIGINAL else "fitting + evaluating")
        clock = time.perf_counter()
        ok = (_run_isolated(out, name) if isolate else _run_here(out, name, config, progress))
        processes.wait()  # the main process has written what the next method reads
        if not ok and name == ORIGINAL:
            raise FairstampError(f"evaluating the original model failed; see "
                                 f"{out / 'failed' / 'original.json'}")
        log.info("%s %s in %.0f s", name, "finished" if ok else "FAILED",
                 time.perf_counter() - clock)
    return write_results(out, config) if processes.is_main else {}


def _check_or_write_config(config: BenchConfig, out: Path, *, write: bool = True) -> None:
    path = out / CONFIG_NAME
    if path.is_file():
        earlier = json.loads(path.read_text())
        shared = config.shared()
        # A setting the earlier run did not record yet had its default then.
        defaults = {f.name: default(EditRunConfig, f.name) for f in fields(EditRunConfig)
                    if f.name != "model"}
        changed = [k for k, v in shared.items() if earlier.get(k, defaults.get(k)) != v]
        if changed:
            raise FairstampError(
                f"{out} holds a bench run with other settings ({', '.join(changed)}); use "
                f"another --out, or the same settings to resume it")
        merged = {**earlier, "methods": list(dict.fromkeys([*earlier.get("methods", []),
                                                           *config.methods])),
                  "options": {**earlier.get("options", {}), **config.options}}
        if write:
            atomic_write_json(path, merged)
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, config.to_dict())


def _run_isolated(out: Path, name: str) -> bool:
    command = [sys.executable, "-m", "fairstamp.bench.worker", str(out), name,
               str(max_sentence_tokens())]
    return subprocess.run(command, check=False).returncode == 0


def _run_here(out: Path, name: str, config: BenchConfig, progress: bool | None) -> bool:
    processes = current_processes()
    try:
        run_one(out, name, config, progress=progress, isolated=False)
        return True
    except Exception as exc:  # recorded, and the next method runs (one process only)
        if processes.is_main:
            record_failure(out, name, exc)
        if processes.sharded:
            raise
        return False


def record_failure(out: Path, name: str, exc: BaseException) -> None:
    log.error("%s failed: %s", name, exc)
    atomic_write_json(out / "failed" / f"{name}.json", {
        "method": name, "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc()})


def _peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def context_for(config: BenchConfig, loaded: Any, progress: bool | None = None
                ) -> tuple[EditContext, EditSetup]:
    """(EditContext, EditSetup) of a bench run: the same for every method."""
    check_given_layer(config, loaded.num_layers, loaded.name)
    setup = prepare_edit(config)
    if config.layer is None and config.layer_rule not in UNTRACED_RULES:
        layer, _, _ = edit_layer(loaded, config, setup, progress=progress)
    else:  # the layer needs no trace; bench does not report one
        layer, _ = choose_layer(config, loaded.num_layers, loaded.name)
    context = setup.context(loaded, layer, seed=config.seed, cache_dir=config.cache_dir,
                            progress=progress)
    return context, setup


def run_one(out: Path, name: str, config: BenchConfig, *, progress: bool | None = None,
            isolated: bool = True) -> Path:
    """Fit one method (or none, for the original) and evaluate it into its folder."""
    seed_everything(config.seed)
    loaded = load(config.model, cache_dir=config.cache_dir, device=config.device,
                  **config.placement())
    context, setup = context_for(config, loaded, progress)
    reference = None
    result: dict[str, Any] = {"method": name, "layer": context.layer,
                              "n_edited": len(context.items), "isolated_process": isolated,
                              "versions": library_versions()}
    edit = None
    if name != ORIGINAL:
        reference = json.loads((method_folder(out, ORIGINAL) / "predictions.json").read_text())
        method = get_method(name, **config.options.get(name, {}))
        result["config"] = method.config_dict(config.seed)
        clock = time.perf_counter()
        edit = method.fit(context)
        result["fit_seconds"] = round(time.perf_counter() - clock, 2)
        result["parameters_changed"] = edit.parameters_changed()
        result["edit"] = edit.summary()
    # Measured before the evaluation, so this is the peak of loading + fitting.
    result["peak_mib"] = round(_peak_mib(), 1)
    result["peak_scope"] = ("this method's own process (model load + fit)" if isolated else
                            "the whole process so far (not isolated)")
    clock = time.perf_counter()
    processes = current_processes()
    evaluation = evaluate(loaded, setup.eval_config, progress=progress,
                          bias_items=setup.items, reference_predictions=reference,
                          max_batch_tokens=config.max_batch_tokens, processes=processes)
    result["eval_seconds"] = round(time.perf_counter() - clock, 2)
    folder = method_folder(out, name)
    if not processes.is_main:  # under accelerate launch the main process writes (and folds)
        return folder
    with run_folder(folder, overwrite=True) as written:
        written.evaluation("", evaluation.metrics, evaluation.predictions)
        if edit is not None:
            edit.save(written.path)
            edit.restore(loaded)
        if config.folds > 1 and edit is not None:  # the original's row: collect() fills it
            clock = time.perf_counter()
            result["cross_validation"] = _cross_validate(name, config, loaded, context, setup,
                                                         progress)
            result["cross_validation_seconds"] = round(time.perf_counter() - clock, 2)
        written.json("result.json", result)
    failure = out / "failed" / f"{name}.json"
    if failure.exists():
        os.unlink(failure)
    return folder


def _cross_validate(name: str, config: BenchConfig, loaded: Any, context: EditContext,
                    setup: EditSetup, progress: bool | None = None) -> dict[str, Any]:
    """`--folds K`: the method fitted K more times on the original model, each fold's targets
    held out (runs/folds.py)."""

    def fit(fold_context: EditContext) -> Edit:
        return get_method(name, **config.options.get(name, {})).fit(fold_context)

    return cross_validate(
        loaded, setup.items, lambda items: replace(context, items=items), fit,
        folds=config.folds, seed=config.seed, n_resamples=config.n_resamples,
        max_batch_tokens=config.max_batch_tokens, progress=progress)
