"""`fairstamp bench`: FAST and the baselines side by side on the same items, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli.options import DEFAULT, BatchTokensOpt, CacheDirOpt, DeviceOpt, ModelOpt


def parse_options(values: list[str] | None) -> dict[str, dict[str, str]]:
    """`["rome.v_lr=0.1", "fast.width=128"]` → {"rome": {"v_lr": "0.1"}, "fast": {...}}."""
    from fairstamp.errors import FairstampError

    out: dict[str, dict[str, str]] = {}
    for value in values or []:
        key, sep, setting = value.partition("=")
        method, dot, option = key.strip().partition(".")
        if not (sep and dot and method and option):
            raise FairstampError(f"--option {value!r}: write METHOD.OPTION=VALUE, e.g. "
                                 f"rome.v_lr=0.1")
        out.setdefault(method, {})[option] = setting.strip()
    return out


def bench_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created, or resumed "
                                      "when it holds a bench run with the same settings).")],
    model: ModelOpt = DEFAULT,
    methods: Annotated[str, typer.Option(
        help="Comma-separated methods, in table order: fast, ft, rome, memit, cda, inlp, "
        "sentence_debias, self_debias.")]
    = "fast,ft,rome,memit,cda,inlp,sentence_debias,self_debias",
    data: Annotated[str, typer.Option(help="stereoset | a file (as in `fairstamp debias`).")]
    = "stereoset",
    bias_types: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated bias types, e.g. gender,race,religion.")] = "gender",
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most N bias items.")]  # noqa: UP045
    = None,
    layer: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="The layer single-layer methods edit (default: FAST's rule, two thirds of the "
        "depth; MEMIT edits the layers ending there).")] = None,
    option: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--option", help="A method's knob, METHOD.OPTION=VALUE (repeatable), e.g. "
        "rome.v_num_grad_steps=10.")] = None,
    held_out_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Share of targets never edited (held-out SS).")] = 0.2,
    suite: Annotated[str, typer.Option(help="Evaluation suite: all | biascope | stereoset.")]
    = "all",
    quick: Annotated[bool, typer.Option(
        "--quick", help="The small general-ability subsets of `debias --quick`.")] = False,
    general_limits: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Subset sizes of the general suite, as in `fairstamp eval`.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, every fit and the "
                                      "bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for CIs.")] = 1000,
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Run every method in this process (peak memory is then the "
        "whole run's) instead of one process per method.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Public data folder (default: $FAIRSTAMP_DATA or ../shared/data).")] = None,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Fit every named method on the same edit-side items (same layer, text and seed), evaluate
    each with the same BiaScope suite, and write results.md / results.json with a trade-off plot
    (|SS − 50| vs RS and vs LMS). Resumable: a finished method is not run again."""
    from fairstamp.bench.runner import BenchConfig, run_bench
    from fairstamp.bench.table import print_results
    from fairstamp.cli.debias import QUICK_GENERAL_LIMITS
    from fairstamp.cli.evaluate import parse_limits
    from fairstamp.cli.options import split_list

    limits = dict(QUICK_GENERAL_LIMITS) if quick else {}
    limits.update(parse_limits(general_limits))
    config = BenchConfig(
        model=model, methods=split_list(methods) or [], data=data,
        bias_types=split_list(bias_types), limit=limit, held_out_fraction=held_out_fraction,
        seed=seed, layer=layer, suite=suite, general_limits=limits, n_resamples=bootstrap,
        data_dir=str(data_dir.resolve()) if data_dir else None,
        cache_dir=str(cache_dir.resolve()) if cache_dir else None, device=device,
        max_batch_tokens=batch_tokens, options=parse_options(option))
    for name, settings in config.options.items():  # unknown knobs fail before any work
        from fairstamp.methods import get_method

        get_method(name, **settings)
    results = run_bench(config, out, isolate=not in_process)
    print_results(results)
    typer.echo(f"results: {out / 'results.md'}", err=True)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
