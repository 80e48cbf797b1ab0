"""`fairstamp trace`: bias causal tracing — which layer's MLP carries the bias (SPEC §4.1)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fairstamp.cli.options import (
    DEFAULT,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceOpt,
    ModelOpt,
    split_list,
)

SPLITS = ("edit", "held_out", "all")


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
    reduction: Annotated[str, typer.Option(help="Sentence score: per-token 'mean' or 'sum'.")]
    = "mean",
    seed: Annotated[int, typer.Option(help="Seed of the noise and of the target split.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")]
    = False,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Locate a bias: corrupt the target group's tokens with noise, restore one layer's MLP,
    attention or residual output at a time, and measure the share of the stereo−anti score gap
    each restores. Writes trace.json, report.md and plots; prints the decisive layer."""
    from fairstamp.errors import FairstampError
    from fairstamp.models import load
    from fairstamp.tracing import trace_bias

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if split not in SPLITS:
        raise FairstampError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if reduction not in ("mean", "sum"):
        raise FairstampError(f"--reduction must be 'mean' or 'sum', got {reduction!r}")
    items = select_items(data, split_list(bias_types), split=split,
                         held_out_fraction=held_out_fraction, seed=seed, limit=limit)
    loaded = load(model, cache_dir=cache_dir, device=device)
    start = time.perf_counter()
    result = trace_bias(loaded, items, components=split_list(components) or [],
                        window=window, samples=samples, noise_scale=noise_scale, seed=seed,
                        reduction=reduction, heatmap_items=heatmap_items,  # type: ignore[arg-type]
                        max_batch_tokens=batch_tokens)
    seconds = time.perf_counter() - start
    record = _record(result, loaded, items, seconds=seconds,
                     selection={"data": data, "bias_types": split_list(bias_types),
                                "limit": limit, "split": split,
                                "held_out_fraction": held_out_fraction, "seed": seed})
    write_trace(record, result, out, overwrite=overwrite)
    _print_summary(result, seconds)
    typer.echo(f"report: {out / 'report.md'}", err=True)


def select_items(data: str, bias_types: list[str] | None, *, split: str,
                 held_out_fraction: float, seed: int, limit: int | None) -> list[Any]:
    """Load the items, keep one side of the target split, then the first `limit`."""
    from fairstamp.data.bias_sets import load_bias_set
    from fairstamp.data.splits import split_by_target
    from fairstamp.errors import FairstampError

    items = load_bias_set(data, bias_types)
    if split != "all":
        edit, held_out = split_by_target(items, held_out_fraction=held_out_fraction, seed=seed)
        items = edit if split == "edit" else held_out
    items = items[:limit] if limit else items
    if not items:
        raise FairstampError(f"no items to trace in {data} (bias types "
                             f"{', '.join(bias_types or ['all'])}, split {split})")
    return items


def _record(result, loaded, items, *, seconds, selection) -> dict[str, Any]:
    from fairstamp.utils.repro import library_versions

    body = result.to_dict()
    by_id = {item.id: item for item in items}
    body["items"] = [
        {"id": i, "bias_type": by_id[i].bias_type, "target": by_id[i].target,
         "stereo": by_id[i].stereo, "anti": by_id[i].anti, "rule": rule,
         "corrupted_positions": positions, "clean_gap": clean, "corrupted_gap": corrupted}
        for i, rule, positions, clean, corrupted in zip(
            result.item_ids, result.corruption_rules, result.corrupted_positions,
            body["clean_gaps"], body["corrupted_gaps"])]
    body["timing"] = {**result.timing, "total_s": seconds,
                      "per_item_s": seconds / max(len(items), 1)}
    return {"model": loaded.name, "model_path": loaded.path, "selection": selection,
            **body, "library_versions": library_versions()}


def write_trace(record: dict[str, Any], result: Any, out: Path, *, overwrite: bool) -> None:
    """trace.json, plots and report.md, built in a staging folder and moved into place."""
    from fairstamp.reporting.plots import layer_position_heatmap, layer_profiles
    from fairstamp.utils.io import atomic_write_json, atomic_write_text, staging_dir

    with staging_dir(out, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "trace.json", record)
        plots = tmp / "plots"
        decisive = result.decisive_layer("mlp") if "mlp" in result.components else None
        layer_profiles(record["average"], plots / "layer_profile.png",
                       title=f"Bias tracing: {record['model']} ({len(result.item_ids)} items)",
                       highlight=decisive)
        heatmap_files = []
        for n, heatmap in enumerate(result.heatmaps):
            for component, effects in heatmap.effects.items():
                name = f"heatmap_{component}_{_file_part(heatmap.item_id, n)}.png"
                layer_position_heatmap(effects.tolist(), heatmap.tokens, plots / name,
                                       title=f"{component}: {heatmap.item_id}",
                                       corrupted=heatmap.corrupted)
                heatmap_files.append((heatmap.item_id, component, name))
        atomic_write_text(tmp / "report.md", _report(record, result, heatmap_files))


def _file_part(item_id: str, index: int) -> str:
    """A file-name-safe form of an item id (the index where nothing of it is left)."""
    import re

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id).strip("._")[:80]
    return safe or str(index)


def _report(record: dict[str, Any], result: Any, heatmap_files: list[tuple[str, str, str]]) -> str:
    cfg = record["config"]
    lines = [
        f"# Bias tracing: {record['model']}",
        "",
        f"{len(result.item_ids)} items ({record['selection']['data']}, split "
        f"{record['selection']['split']}); {cfg['samples']} noise samples of "
        f"{cfg['noise_scale']:g}× the embedding std; window {cfg['window']}; restored at the "
        f"last corrupted token; scores: per-token {cfg['reduction']}; seed {cfg['seed']}.",
        "",
        "Effect = (gap_restored − gap_corrupted) / (gap_clean − gap_corrupted), gap = "
        "score(stereo) − score(anti); averaged over items as a ratio of sums (each item weighted "
        "by how far its corruption moved the gap).",
        "",
        "| component | decisive layer | top 5 layers (effect) |",
        "|---|---|---|",
    ]
    for c in result.components:
        avg = result.average[c]
        top = ", ".join(f"{i} ({avg[i]:.3f})" for i in result.ranked_layers(c)[:5])
        lines.append(f"| {c} | {result.decisive_layer(c)} | {top} |")
    timing = record["timing"]
    lines += ["", f"Time: {timing['total_s']:.1f} s ({timing['per_item_s']:.2f} s per item, "
              f"heat-maps {timing.get('heatmap_s', 0.0):.1f} s).", "",
              "![layer profile](plots/layer_profile.png)", ""]
    for item_id, component, name in heatmap_files:
        lines += [f"**{component}, {item_id}**", "", f"![{component} {item_id}](plots/{name})", ""]
    return "\n".join(lines)


def _print_summary(result: Any, seconds: float) -> None:
    n = len(result.item_ids)
    for c in result.components:
        avg = result.average[c]
        top = ", ".join(f"{i} ({avg[i]:.3f})" for i in result.ranked_layers(c)[:5])
        typer.echo(f"{c:>5}: decisive layer {result.decisive_layer(c)}; top 5: {top}")
    typer.echo(f"{n} items in {seconds:.1f} s ({seconds / max(n, 1):.2f} s per item)")


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
