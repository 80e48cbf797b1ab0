"""`fairstamp trace`: bias causal tracing — which layer's MLP carries the bias (SPEC §4.1)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fairstamp.cli import validate as V
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    MaxSentenceTokens,
    ModelOpt,
    OffloadFolderOpt,
    split_list,
)
from fairstamp.data.bias_sets import load_bias_set
from fairstamp.data.splits import split_by_target
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.errors import FairstampError
from fairstamp.evaluation.config import DEFAULT_REDUCTION, REDUCTIONS, check_reduction
from fairstamp.reporting.run_folder import REPORT, run_folder
from fairstamp.reporting.trace_report import top_layers, trace_record, write_trace_folder

SPLITS = ("edit", "held_out", "all")
COMPONENTS = ("mlp", "attn", "resid")


def trace_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    model: ModelOpt = DEFAULT,
    data: Annotated[str, typer.Option(
        help="stereoset | crows | a file: SPEC §2 bias JSONL, StereoSet .json or CrowS-Pairs "
        ".csv.")] = "stereoset",
    bias_types: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated bias types, e.g. gender,race (default: all).")] = None,
    limit: Annotated[Optional[int], typer.Option(  # noqa: UP045
        min=1, help="Trace the first N items of the chosen split.")] = None,
    split: Annotated[str, typer.Option(help="edit | held_out | all: which side of the target "
                                       "split to trace (edit: the items a stamp would edit).")]
    = "edit",
    held_out_fraction: Annotated[float, typer.Option(min=0.0, max=1.0,
                                                     help="Share of targets held out.")] = 0.2,
    components: Annotated[str, typer.Option(help="Comma-separated components to restore: mlp, "
                                            "attn, resid.")] = "mlp,attn,resid",
    samples: Annotated[int, typer.Option(min=1, help="Noise samples per item.")] = 5,
    window: Annotated[int, typer.Option(min=1, help="Layers restored together around each "
                                        "layer.")] = 1,
    noise_scale: Annotated[float, typer.Option(min=0.0, help="Noise std in embedding stds.")]
    = 3.0,
    heatmap_items: Annotated[int, typer.Option(min=0, help="Layer × position heat-maps for the "
                                               "first N items (each costs about one profile per "
                                               "position).")] = 3,
    reduction: Annotated[str, typer.Option(
        help=f"Sentence score: per-token {' or '.join(map(repr, REDUCTIONS))}.")]
    = DEFAULT_REDUCTION,
    seed: Annotated[int, typer.Option(help="Seed of the noise and of the target split.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")]
    = False,
    max_sentence_tokens: MaxSentenceTokens = DEFAULT_MAX_SENTENCE_TOKENS,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Locate a bias: corrupt the target group's tokens with noise, restore one layer's MLP,
    attention or residual output at a time, and measure the share of the stereo−anti score gap
    each restores. Writes trace.json, report.md and plots; prints the decisive layer."""
    # torch and the tracer at call time, not when the CLI starts.
    from fairstamp.tracing import trace_bias

    # Everything is checked, and --out claimed, before any model work.
    V.check_choice(split, SPLITS, "--split")
    V.check_choices(split_list(components), COMPONENTS, "--components")
    if not split_list(components):
        raise FairstampError(f"--components: name at least one of {', '.join(COMPONENTS)}")
    check_reduction(reduction, "--reduction")
    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    V.check_data(data)
    with sentence_length_limit(max_sentence_tokens), \
            V.claimed_output(out, overwrite=overwrite):
        items = select_items(data, split_list(bias_types), split=split,
                             held_out_fraction=held_out_fraction, seed=seed, limit=limit)
        loaded = V.load_model(model, cache_dir=cache_dir, **placement)
        V.check_item_lengths(items, data, loaded.tokenizer)
        start = time.perf_counter()
        result = trace_bias(loaded, items, components=split_list(components) or [],
                            window=window, samples=samples, noise_scale=noise_scale, seed=seed,
                            reduction=reduction,  # type: ignore[arg-type]
                            heatmap_items=heatmap_items, max_batch_tokens=batch_tokens)
        seconds = time.perf_counter() - start
        record = trace_record(result, loaded, items, seconds=seconds,
                              selection={"data": data, "bias_types": split_list(bias_types),
                                         "limit": limit, "split": split,
                                         "held_out_fraction": held_out_fraction, "seed": seed})
        with run_folder(out, overwrite=overwrite) as folder:
            write_trace_folder(folder, record, result)
    _print_summary(result, seconds)
    typer.echo(f"report: {out / REPORT}", err=True)


def select_items(data: str, bias_types: list[str] | None, *, split: str,
                 held_out_fraction: float, seed: int, limit: int | None) -> list[Any]:
    """Load the items, keep one side of the target split, then the first `limit`."""
    items = load_bias_set(data, bias_types)
    if split != "all":
        edit, held_out = split_by_target(items, held_out_fraction=held_out_fraction, seed=seed)
        items = edit if split == "edit" else held_out
    items = items[:limit] if limit else items
    if not items:
        raise FairstampError(f"no items to trace in {data} (bias types "
                             f"{', '.join(bias_types or ['all'])}, split {split})")
    return items


def _print_summary(result: Any, seconds: float) -> None:
    n = len(result.item_ids)
    for c in result.components:
        typer.echo(f"{c:>5}: decisive layer {result.decisive_layer(c)}; top 5: "
                   f"{top_layers(result, c)}")
    typer.echo(f"{n} items in {seconds:.1f} s ({seconds / max(n, 1):.2f} s per item)")


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
