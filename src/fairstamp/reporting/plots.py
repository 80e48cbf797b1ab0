"""Plots people would rather look at than tables. Matplotlib with the Agg backend, PNG files.

Every function takes plain result dictionaries (as stored in `metrics.json`), so a report can be
re-plotted from a finished run folder without the model.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairstamp.utils.io import atomic_write_bytes

_COLORS = {
    "gender": "#d62728",
    "race": "#1f77b4",
    "religion": "#2ca02c",
    "profession": "#9467bd",
    "overall": "#444444",
}


def _pyplot():
    # matplotlib (heavy, and only for plots) loads on the first plot, not on import.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _color(name: str) -> str:
    return _COLORS.get(name, "#7f7f7f")


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def bars_with_ideal(
    values: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    title: str,
    ylabel: str,
    ideal: float | None = 50.0,
    series: Sequence[str] | None = None,
) -> Path:
    """Grouped bars with CI whiskers: `values[series][category] -> MetricValue dict`.

    One series gives SS per bias type; two series (before, after) give a before/after chart.
    """
    plt = _pyplot()
    series = list(series or values)
    categories = list(dict.fromkeys(c for s in series for c in values[s]))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(categories) * max(len(series), 1)), 3.6))
    palette = ["#9aa5b1", "#1f6feb", "#f0883e", "#2da44e"]
    for k, name in enumerate(series):
        xs, heights, lows, highs = [], [], [], []
        for i, cat in enumerate(categories):
            mv = values[name].get(cat)
            if mv is None:
                continue
            xs.append(i + (k - (len(series) - 1) / 2) * width)
            heights.append(mv["value"])
            lows.append(mv["value"] - mv["ci_low"])
            highs.append(mv["ci_high"] - mv["value"])
        colors = [_color(c) for c in categories] if len(series) == 1 else palette[k % 4]
        ax.bar(xs, heights, width=width * 0.92, color=colors, label=name,
               yerr=[lows, highs], capsize=3, edgecolor="black", linewidth=0.4)
    if ideal is not None:
        ax.axhline(ideal, color="black", linestyle="--", linewidth=1, label=f"ideal ({ideal:g})")
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def per_target_scatter(per_target: Mapping[str, Mapping[str, Any]], path: Path, *,
                       title: str) -> Path:
    """SS of each StereoSet target (y) against its number of items (x), coloured by bias type."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    by_type: dict[str, list[tuple[int, float]]] = {}
    for row in per_target.values():
        by_type.setdefault(row["bias_type"], []).append((row["n"], row["ss"]))
    for bias_type, points in sorted(by_type.items()):
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=14, alpha=0.7, color=_color(bias_type), label=bias_type)
    ax.axhline(50, color="black", linestyle="--", linewidth=1, label="ideal (50)")
    ax.set_xlabel("items per target")
    ax.set_ylabel("SS of the target (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def lms_vs_ss(points: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, *,
              title: str) -> Path:
    """One point per bias type (and overall): x = SS, y = LMS, with CI whiskers; ideal (50, 100)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, mv in points.items():
        ss, lms = mv["ss"], mv["lms"]
        ax.errorbar(ss["value"], lms["value"],
                    xerr=[[ss["value"] - ss["ci_low"]], [ss["ci_high"] - ss["value"]]],
                    yerr=[[lms["value"] - lms["ci_low"]], [lms["ci_high"] - lms["value"]]],
                    fmt="o", color=_color(name), label=name, capsize=3)
    ax.scatter([50], [100], marker="*", s=160, color="gold", edgecolor="black", zorder=5,
               label="ideal")
    ax.axvline(50, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("SS (%)  — 50 is unbiased")
    ax.set_ylabel("LMS (%)  — higher is better")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


_COMPONENT_COLORS = {"mlp": "#1f77b4", "attn": "#d62728", "resid": "#2ca02c"}
_COMPONENT_NAMES = {"mlp": "MLP", "attn": "attention", "resid": "residual stream"}


def layer_profiles(profiles: Mapping[str, Sequence[float | None]], path: Path, *, title: str,
                   peak: int | None = None, chosen: int | None = None,
                   chosen_label: str = "stamp layer") -> Path:
    """Effect per layer, one line per traced component (`profiles[component][layer]`), with the
    traced peak (the decisive MLP layer) and the layer chosen for an edit marked apart."""
    plt = _pyplot()
    n_layers = max((len(v) for v in profiles.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.22 * n_layers + 2.5), 3.6))
    for component, values in profiles.items():
        ys = [float("nan") if v is None else v for v in values]
        ax.plot(range(len(ys)), ys, marker="o", markersize=3, linewidth=1.4,
                color=_COMPONENT_COLORS.get(component, "#7f7f7f"),
                label=_COMPONENT_NAMES.get(component, component))
    if peak is not None:
        ax.axvline(peak, color="#d62728", linestyle="--", linewidth=1,
                   label=f"traced peak, MLP ({peak})")
    if chosen is not None:
        ax.axvline(chosen, color="black", linestyle=":", linewidth=1,
                   label=f"{chosen_label} ({chosen})")
    ax.axhline(0, color="#999999", linewidth=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the gap restored")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def layer_position_heatmap(effects: Sequence[Sequence[float | None]], tokens: Sequence[str],
                           path: Path, *, title: str, corrupted: Sequence[int] = ()) -> Path:
    """Layer (y) × token position (x) heat-map of restoration effects; corrupted tokens are marked
    with `*`."""
    plt = _pyplot()
    grid = np.array([[np.nan if v is None else v for v in row] for row in effects], dtype=float)
    n_layers, n_positions = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * n_positions + 1.8),
                                    max(3.0, 0.16 * n_layers + 1.5)))
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r",
                      vmin=-max(bound, 1e-9), vmax=max(bound, 1e-9), interpolation="nearest")
    marked = set(corrupted)
    labels = [f"{t.strip() or repr(t)}*" if i in marked else (t.strip() or repr(t))
              for i, t in enumerate(tokens)]
    ax.set_xticks(range(n_positions), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the gap restored")
    return _save(fig, path)


def training_curve(history: Sequence[Mapping[str, float]], path: Path, *, title: str) -> Path:
    """Stamp training: the edited items' SS (left axis, ideal 50) and the loss terms (right axis,
    log scale) at every check."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(steps, [h["ss"] for h in history], color="black", marker="o", markersize=3,
            label="SS of the edited items")
    ax.axhline(50, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("SS (%)")
    right = ax.twinx()
    for key, color, label in (("bias_loss_all", "#d62728", "bias loss L_e (all edited)"),
                              ("batch_lean", "#ff7f0e", "lean, |mean gap| (batch)"),
                              ("keep_mean", "#9467bd", "keep-mean L_m (batch)"),
                              ("retention_kl", "#1f77b4", "retention KL L_s1 (batch)"),
                              ("generic_kl", "#2ca02c", "generic KL L_s2 (batch)")):
        if not any(key in h for h in history):
            continue  # L_m only when γ > 0, the lean only when λ > 0
        values = [max(h.get(key, 0.0), 1e-8) for h in history]
        right.plot(steps, values, color=color, linewidth=1.2, label=label)
    right.set_yscale("log")
    right.set_ylabel("loss")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def held_out_curves(per_fold: Sequence[Mapping[str, Any]], path: Path, *, title: str,
                    before: float | None = None) -> Path | None:
    """Cross-validation's learning curves: each fold's held-out SS at every training check (its
    `edit.checks`, monitored; step 0: the original model, where the fold records it), the check
    it kept marked, and the curve pooled over the folds' items at the steps every fold checked
    (step 0: `before`, the pooled SS of the original model). None when no fold was monitored."""
    folds = [f for f in per_fold if any("monitor_ss" in c for c in f["edit"].get("checks", ()))]
    if not folds:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    curves = []
    for f in folds:
        curve = {c["step"]: c["monitor_ss"] for c in f["edit"]["checks"] if "monitor_ss" in c}
        if f.get("held_out_ss_before") is not None:
            curve = {0: f["held_out_ss_before"], **curve}
        curves.append(curve)
        line, = ax.plot(list(curve), list(curve.values()), linewidth=1, alpha=0.7,
                        label=f"fold {f['fold'] + 1}: {', '.join(f['held_out_targets'])}")
        kept = f["edit"].get("kept_step")
        if kept in curve:
            ax.scatter([kept], [curve[kept]], color=line.get_color(), zorder=3)
    steps = sorted(set.intersection(*(set(c) - {0} for c in curves)))
    if steps:
        total = sum(f["n_held_out"] for f in folds)
        pooled = [sum(c[s] * f["n_held_out"] for c, f in zip(curves, folds)) / total
                  for s in steps]
        if before is not None:
            steps, pooled = [0, *steps], [before, *pooled]
        ax.plot(steps, pooled, color="black", linewidth=2.2, label="pooled over the folds")
    ax.axhline(50, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training step (0: the original model; dots: the check each fold kept)")
    ax.set_ylabel("held-out SS (%)")
    ax.legend(fontsize=6, loc="best")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def tradeoff(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path | None:
    """One point per method (`fairstamp bench` rows): |SS − 50| of the edited items against RS
    on unseen retention items and against LMS."""
    done = [r for r in rows if r.get("ss_edited") is not None]
    if not done:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "rs_unseen", "RS on unseen retention items (%)"),
                           (axes[1], "lms", "LMS (%)")):
        for row in done:
            y = row.get(key)
            if y is None and key == "rs_unseen" and row["method"] == "original":
                y = 100.0  # RS compares with the original: 100 by definition
            if y is None:
                continue
            x = abs(row["ss_edited"] - 50.0)
            marker = "*" if row["method"] in ("original", "fast") else "o"
            ax.scatter([x], [y], s=120 if marker == "*" else 50, marker=marker)
            ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xlabel("|SS − 50| on the edited items (lower is better)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def recipe_tradeoff(points: Mapping[str, Mapping[str, float]], path: Path, *, title: str,
                    before: float | None = None) -> Path | None:
    """One point per training recipe (benchmarks/generalisation.py): |cross-validated held-out
    SS − 50| against the knowledge cost, the held-out LMS lost (points). `points` maps a recipe
    to {"ss": ..., "lms_drop": ...}; a point with "ss_range" (the lowest and highest SS of
    several seeds, "ss" their mean) gets a whisker over the distances from 50 they span; `before`
    (the unedited held-out SS) adds the original model's point at zero cost."""
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4) if len(points) <= 20 else (8.5, 5.8))
    if before is not None:
        ax.scatter([abs(before - 50.0)], [0.0], s=120, marker="*", color="black")
        ax.annotate("original", (abs(before - 50.0), 0.0), textcoords="offset points",
                    xytext=(5, -12), fontsize=8)
    for name, point in points.items():
        x, y = abs(point["ss"] - 50.0), point["lms_drop"]
        if "ss_range" in point:
            lowest, highest = point["ss_range"]
            low = 0.0 if lowest <= 50.0 <= highest else min(abs(lowest - 50), abs(highest - 50))
            high = max(abs(lowest - 50.0), abs(highest - 50.0))
            ax.errorbar([x], [y], xerr=[[max(0.0, x - low)], [max(0.0, high - x)]], fmt="o",
                        capsize=3, markersize=7)
        else:
            ax.scatter([x], [y], s=50)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)  # the LMS target: drop <= 1
    ax.set_xlabel("|held-out SS − 50|, cross-validated by target (lower is better)")
    ax.set_ylabel("held-out LMS lost (points; lower is better)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _whiskers(ax, xs: Sequence[float], values: Sequence[Mapping[str, float]], **kw: Any) -> None:
    """Points with CI whiskers; a percentile CI need not contain its point (the largest of
    several noisy gaps is biased upward, and so are its resamples), so a whisker is drawn up to
    the point at least."""
    ax.errorbar(xs, [v["value"] for v in values],
                yerr=[[max(0.0, v["value"] - v["ci_low"]) for v in values],
                      [max(0.0, v["ci_high"] - v["value"]) for v in values]],
                fmt="o", capsize=3, **kw)


def transfer_overview(results: Mapping[str, Any], path: Path, *, title: str) -> Path | None:
    """The transfer suite in one figure, a panel per part present: BBQ's bias scores (s_DIS,
    s_AMB) per bias type, WinoBias accuracy on pro vs anti sentences per type, and BOLD's
    largest sentiment gap between groups per domain; 95% CI whiskers, ideals dashed."""
    panels = [p for p in ("bbq", "winobias", "bold") if results.get(p)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, part in zip(axes[0], panels):
        data = results[part]
        if part == "bbq":
            for k, (key, label) in enumerate((("bias_disambig", "s_DIS"),
                                              ("bias_ambig", "s_AMB"))):
                groups = {"overall": data[key]["overall"], **data[key].get("by_type", {})}
                names = list(groups)
                _whiskers(ax, [i + (k - 0.5) * 0.25 for i in range(len(names))],
                          [groups[n] for n in names], label=label)
            ax.set_xticks(range(len(names)), names)
            ax.axhline(0, color="black", linestyle="--", linewidth=1)
            ax.set_ylabel("bias score (−100 … 100)")
            ax.set_title("BBQ")
        elif part == "winobias":
            names = list(data["acc_pro"])
            for k, (key, label) in enumerate((("acc_pro", "pro-stereotypical"),
                                              ("acc_anti", "anti-stereotypical"))):
                _whiskers(ax, [i + (k - 0.5) * 0.25 for i in range(len(names))],
                          [data[key][n] for n in names], label=label)
            ax.set_xticks(range(len(names)), names)
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-3, 103)
            ax.set_title("WinoBias (equal is unbiased)")
        else:
            names = list(data["domains"])
            _whiskers(ax, range(len(names)), [data["domains"][d]["max_gap"] for d in names],
                      label="max − min group mean")
            ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
            ax.axhline(0, color="black", linestyle="--", linewidth=1)
            ax.set_ylabel("VADER compound gap")
            ax.set_title("BOLD generations")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def cost_curves(result: Mapping[str, Any], path: Path) -> Path:
    """benchmarks/cost_curves.py's figure: evaluation time by way of running it; an edit's setup
    and step time and its peak memory as the edited items grow; every phase's peak memory against
    the model's own size, per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ways = result["evaluation"]["ways"]
    ax = axes[0][0]
    ax.barh(range(len(ways)), [w["seconds"] for w in ways.values()], color="#1f77b4")
    ax.set_yticks(range(len(ways)), list(ways), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    first = next(iter(ways.values()))
    ax.set_title(f"scoring {first['sentences']} StereoSet sentences", fontsize=9)
    items = result["items"]
    n = [row["items"] for row in items]
    ax = axes[0][1]
    ax.plot(n, [row["step_s"] for row in items], "o-", label="seconds per step")
    ax.plot(n, [row["setup_s"] / 10 for row in items], "s--", label="setup seconds / 10")
    ax.set_xscale("log")
    ax.set_xlabel("edited items")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"an edit as the items grow ({items[0]['model']})", fontsize=9)
    ax = axes[1][0]
    ax.plot(n, [row["phases"]["edit"]["peak_rss_gib"] for row in items], "o-",
            label="edit (setup and steps)")
    ax.axhline(items[0]["model_gib"], color="grey", linestyle=":", label="the model's weights")
    ax.set_xscale("log")
    ax.set_xlabel("edited items")
    ax.set_ylabel("peak resident memory (GiB)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1][1]
    models = result["models"]
    phases = list(models[0]["phases"])
    width = 0.8 / len(models)
    for k, row in enumerate(models):
        ax.bar([i + (k - (len(models) - 1) / 2) * width for i in range(len(phases))],
               [row["phases"][p]["peak_rss_gib"] / row["model_gib"] for p in phases], width,
               label=f"{row['model']} ({row['model_gib']:.2f} GiB)")
    ax.set_xticks(range(len(phases)), phases)
    ax.set_ylabel("peak resident memory / model size")
    ax.legend(fontsize=8)
    ax.set_title("peak memory of every phase", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
