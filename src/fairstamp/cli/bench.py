"""`fairstamp bench`: FAST and the baselines side by side on the same items, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.bench.runner import BenchConfig, run_bench
from fairstamp.bench.table import print_results
from fairstamp.cli import options as O
from fairstamp.cli import validate as V
from fairstamp.cli.evaluate import parse_limits, parse_transfer_limits
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    ModelOpt,
    OffloadFolderOpt,
)
from fairstamp.data.bias_sets import load_bias_set
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.errors import FairstampError
from fairstamp.evaluation.config import SUITES
from fairstamp.runs.config import defaults
from fairstamp.training.loop import LARGE_MAX_STEPS, SMALL_EDIT_ITEMS, SMALL_MAX_STEPS
from fairstamp.utils.distributed import current_processes

RUN = defaults(BenchConfig)  # where every default below is written
BIAS_TYPES = O.comma_list(RUN["bias_types"])
METHODS = O.comma_list(RUN["methods"])


def parse_options(values: list[str] | None) -> dict[str, dict[str, str]]:
    """`["rome.v_lr=0.1", "fast.width=128"]` → {"rome": {"v_lr": "0.1"}, "fast": {...}}."""
    out: dict[str, dict[str, str]] = {}
    for value in values or []:
        key, sep, setting = value.partition("=")
        method, dot, option = key.strip().partition(".")
        if not (sep and dot and method and option):
            raise FairstampError(f"--option {value!r}: write METHOD.OPTION=VALUE, e.g. "
                                 f"rome.v_lr=0.1")
        out.setdefault(method, {})[option] = setting.strip()
    return out


BENCH_HELP = (
    "Fit every named method on the same edit-side items (same layer, text and seed), evaluate "
    "each with the same BiaScope suite, and write results.md / results.json with a trade-off plot "
    "(|SS − 50| vs RS and vs LMS). Resumable: a finished method is not run again. `--quick` "
    "shortens the general suite (and the trace of an argmax layer rule); each method's own "
    f"training length is its option (FAST's automatic one: {SMALL_MAX_STEPS} steps up to "
    f"{SMALL_EDIT_ITEMS} edited items, else {LARGE_MAX_STEPS}; e.g. --option fast.max_steps=100)."
)


def bench_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created, or resumed "
                                      "when it holds a bench run with the same settings).")],
    model: ModelOpt = DEFAULT,
    methods: Annotated[str, typer.Option(
        help=f"Comma-separated methods, in table order: {', '.join(RUN['methods'])}.")]
    = METHODS,
    data: O.Data = RUN["data"],
    bias_types: O.BiasTypes = BIAS_TYPES,
    limit: O.Limit = RUN["limit"],
    layer: O.Layer = RUN["layer"],
    layer_rule: O.LayerRule = RUN["layer_rule"],
    trace_items: O.TraceItems = RUN["trace_items"],
    trace_samples: O.TraceSamples = RUN["trace_samples"],
    option: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--option", help="A method's knob, METHOD.OPTION=VALUE (repeatable), e.g. "
        "rome.v_num_grad_steps=10.")] = None,
    passages: O.Passages = RUN["n_passages"],
    held_out_fraction: O.HeldOutFraction = RUN["held_out_fraction"],
    folds: O.Folds = RUN["folds"],
    suite: O.Suite = RUN["suite"],
    quick: O.Quick = False,
    general_limits: O.GeneralLimits = None,
    transfer_limits: O.TransferLimits = None,
    seed: O.Seed = RUN["seed"],
    bootstrap: O.Bootstrap = RUN["n_resamples"],
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Run every method in this process (peak memory is then the "
        "whole run's) instead of one process per method.")] = False,
    data_dir: O.DataDir = None,
    max_sentence_tokens: O.MaxSentenceTokens = DEFAULT_MAX_SENTENCE_TOKENS,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """`fairstamp bench`; its help is BENCH_HELP."""
    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    V.check_data(data)
    V.check_input_folder(data_dir, "--data-dir")
    V.check_choice(suite, SUITES, "--suite")
    config = BenchConfig(
        model=model, methods=O.split_list(methods) or [], data=data,
        bias_types=O.split_list(bias_types), limit=limit, held_out_fraction=held_out_fraction,
        folds=folds, seed=seed, layer=layer, layer_rule=layer_rule, trace_items=trace_items,
        trace_samples=trace_samples, n_passages=passages, suite=suite,
        general_limits=parse_limits(general_limits),
        transfer_limits=parse_transfer_limits(transfer_limits), n_resamples=bootstrap,
        data_dir=str(data_dir.resolve()) if data_dir else None,
        cache_dir=str(cache_dir.resolve()) if cache_dir else None, device=device,
        max_batch_tokens=batch_tokens, options=parse_options(option), dtype=dtype,
        device_map=placement["device_map"], max_memory=placement["max_memory"],
        offload_folder=(str(Path(placement["offload_folder"]).resolve())
                        if placement["offload_folder"] else None))
    if quick:
        config = config.quick()
    # A bench folder is resumed, not replaced: an existing one is fine, one in use is refused.
    # Under `accelerate launch` (with --in-process) the main process alone claims and writes.
    writes = current_processes().is_main
    with sentence_length_limit(max_sentence_tokens), \
            V.claimed_output(out if writes else None, exist_ok=True):
        V.check_layer_option(layer, model, cache_dir)  # from the model's config alone
        load_bias_set(config.data, config.bias_types, config.limit)  # read and validated first
        results = run_bench(config, out, isolate=not in_process)
    if not writes:
        return
    print_results(results)
    typer.echo(f"results: {out / 'results.md'}", err=True)


def register(app: typer.Typer) -> None:
    app.command("bench", help=BENCH_HELP)(bench_command)
