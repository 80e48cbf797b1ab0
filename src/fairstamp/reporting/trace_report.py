"""The report of a bias-tracing run (`fairstamp trace`): the layer profile, the heat-maps and
report.md, written into a run folder (`fairstamp.reporting.run_folder`).

`record` is trace.json's content; `result` the `fairstamp.tracing.TraceResult` it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fairstamp.reporting.plots import layer_position_heatmap, layer_profiles
from fairstamp.reporting.run_folder import PLOTS, RunFolder
from fairstamp.utils.repro import library_versions

TRACE = "trace.json"
LAYER_PROFILE = "layer profile"


def trace_record(result: Any, loaded: Any, items: Sequence[Any], *, seconds: float,
                 selection: dict[str, Any]) -> dict[str, Any]:
    """trace.json: the result, each item's sentences and corruption, timing and versions."""
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
    return {"model": loaded.name, "model_path": loaded.path, **loaded.placement(),
            "selection": selection, **body, "library_versions": library_versions()}


def write_trace_folder(folder: RunFolder, record: dict[str, Any], result: Any) -> None:
    """trace.json, plots/ and report.md into a run folder being written."""
    folder.json(TRACE, record)
    folder.report(record, render=partial(trace_report, result=result),
                  plots=partial(trace_plots, result=result))


def trace_plots(record: dict[str, Any], folder: Path, *, result: Any) -> dict[str, str]:
    """The layer profile and one heat-map per (item, component), as {caption: path relative to
    the run folder}; a heat-map's caption is "component, item id"."""
    decisive = result.decisive_layer("mlp") if "mlp" in result.components else None
    layer_profiles(record["average"], folder / "layer_profile.png",
                   title=f"Bias tracing: {record['model']} ({len(result.item_ids)} items)",
                   peak=decisive)
    plots = {LAYER_PROFILE: f"{PLOTS}/layer_profile.png"}
    for n, heatmap in enumerate(result.heatmaps):
        for component, effects in heatmap.effects.items():
            name = f"heatmap_{component}_{file_part(heatmap.item_id, n)}.png"
            layer_position_heatmap(effects.tolist(), heatmap.tokens, folder / name,
                                   title=f"{component}: {heatmap.item_id}",
                                   corrupted=heatmap.corrupted)
            plots[f"{component}, {heatmap.item_id}"] = f"{PLOTS}/{name}"
    return plots


def file_part(item_id: str, index: int) -> str:
    """A file-name-safe form of an item id (the index where nothing of it is left)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id).strip("._")[:80]
    return safe or str(index)


def trace_report(record: dict[str, Any], plots: dict[str, str], *, result: Any) -> str:
    """report.md: what was traced, the decisive and top layers per component, time, plots."""
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
    lines += [f"| {c} | {result.decisive_layer(c)} | {top_layers(result, c)} |"
              for c in result.components]
    timing = record["timing"]
    lines += ["", f"Time: {timing['total_s']:.1f} s ({timing['per_item_s']:.2f} s per item, "
              f"heat-maps {timing.get('heatmap_s', 0.0):.1f} s).", ""]
    for caption, path in plots.items():
        if caption == LAYER_PROFILE:
            lines += [f"![{caption}]({path})", ""]
        else:
            component, item_id = caption.split(", ", 1)
            lines += [f"**{caption}**", "", f"![{component} {item_id}]({path})", ""]
    return "\n".join(lines)


def top_layers(result: Any, component: str, n: int = 5) -> str:
    """`12 (0.431), 11 (0.402), ...`: the `n` layers with the largest averaged effect."""
    average = result.average[component]
    return ", ".join(f"{i} ({average[i]:.3f})" for i in result.ranked_layers(component)[:n])
