"""Every FAST recipe cross-validated on one model and bias type, over every seed and every
throw-away patch that ran it: one table and one trade-off plot (issue 16: "the docs show the
trade-off plot of every recipe tried").

Reads the records `benchmarks/generalisation.py` left in
`benchmarks/results/generalisation-<model>-<bias types>-cv<K>` (seed 0), `...-seed<N>` (other
seeds) and `...-<name>` (runs of a patched fairstamp, the patch and a README beside them); a
recipe is its name, options, layer and loss weights as trained, and its rows of several seeds
become one row: the mean of their pooled held-out SS (and the spread), of the held-out LMS lost
and of the fit time. Nothing is trained or scored here.

Usage: python benchmarks/recipe_summary.py [--model smollm2-135m] [--bias-types gender]
           [--folds 5] [--results benchmarks/results]
Writes <results>/recipes-<model>-<bias types>-cv<K>.{md,png}.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

from fairstamp.reporting.plots import recipe_tradeoff
from fairstamp.utils.io import atomic_write_text
from generalisation import (  # this folder's script (on the path when run)
    add_table_arguments,
    fold_distance,
    moved,
    table_slug,
)

HERE = Path(__file__).resolve().parent


def collect(results: Path, slug: str) -> dict[tuple, list[dict]]:
    """(recipe, its options, the patch folder or "", layer, weights) → its rows, one per
    seed."""
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for folder in sorted(results.glob(f"generalisation-{slug}*")):
        suffix = folder.name[len(f"generalisation-{slug}"):]
        if not folder.is_dir() or (suffix and not suffix.startswith("-")):
            continue  # another model's or fold count's folder whose name starts alike
        patch = "" if not suffix or re.fullmatch(r"-seed\d+", suffix) else suffix[1:]
        for path in sorted(folder.glob("*.json")):
            row = json.loads(path.read_text())
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "default"
            # A name reused after a default changed (its layer, δ, α or λ) is another recipe.
            rows[(row["recipe"], options, patch, row["layer"], weights(row))].append(row)
    return rows


def weights(row: dict) -> str:
    """L_c's δ, L_s1's α and the lean's λ the row trained with: from its recorded `fit`, else
    (rows from before the recipe was recorded, 2026-12-04) the defaults of then, α = 1 without L_c
    or lean, under the row's options."""
    fit = row.get("fit")
    if fit is None:
        options = row["options"]
        return (f"δ = {options.get('counterfactual_weight', '0')}, "
                f"α = {options.get('retention_weight', '1')}, λ = 0")
    delta, lean = fit.get("counterfactual_weight"), fit.get("sign_weight", 0.0)
    delta_text = "3 (auto)" if delta is None else f"{delta:g}"
    lean_text = "the model's" if lean is None else f"{lean:g}"  # None: its measured recipe's
    return f"δ = {delta_text}, α = {fit['retention_weight']:g}, λ = {lean_text}"


def summarise(key: tuple, rows: list[dict]) -> dict:
    cv = [r["cross_validation"] for r in rows]
    before = cv[0]["before"]["ss"]["overall"]["value"]
    ss = [c["after"]["ss"]["overall"]["value"] for c in cv]
    lms = [c["before"]["lms"]["overall"]["value"] - c["after"]["lms"]["overall"]["value"]
           for c in cv if "lms" in c["after"]]
    name, options, patch, layer, trained = key
    return {"name": name + (f" ({patch})" if patch else ""), "options": options,
            "layer": layer, "weights": trained,
            "seeds": [r.get("seed", 0) for r in rows], "ss": ss, "before": before,
            "ss_mean": mean(ss), "moved": moved(before, mean(ss)),
            "distance": mean(fold_distance(c["per_fold"],
                                           [f["held_out_ss"] for f in c["per_fold"]]) for c in cv),
            "lms_drop": mean(lms) if lms else None,
            "fit_s": mean(sum(f["fit_seconds"] for f in c["per_fold"]) for c in cv)}


def table(title: str, summaries: list[dict], plot: str | None) -> str:
    lines = [f"# {title}", "",
             "Command: `python benchmarks/recipe_summary.py` over the records of "
             "`benchmarks/generalisation.py` (one row per recipe: its name and options, over "
             "every seed that ran it; the per-seed tables and their columns are the "
             "`generalisation-*.md` files beside this one). Layer and δ, α, λ: as trained (L_c's "
             "weight, L_s1's, the batch's lean), from the row's recorded recipe, or for rows "
             "from before recipes were recorded (2026-12-04) the defaults of then (α = 1, no "
             "L_c, no lean) under its options; a name run again after a default changed is "
             "another row. Fold distance from 50: the "
             "folds' held-out |SS − 50| weighted by their items (an overshoot below 50 in one "
             "fold cannot offset another fold's shortfall, as it can in the pooled SS). A name "
             "with a folder in brackets ran on a throw-away patch stored in that folder. Sorted "
             "by the mean SS's distance from 50.", "",
             "| recipe | options | layer | δ, α, λ | seeds | held-out SS after, per seed | mean | "
             "moved to 50 (of the mean) | fold distance from 50 (mean) | "
             "held-out LMS lost (mean) | fit s, all folds (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lms = "–" if s["lms_drop"] is None else f"{s['lms_drop']:.1f}"
        lines.append(f"| {s['name']} | {s['options']} | {s['layer']} | {s['weights']} | "
                     f"{', '.join(map(str, s['seeds']))} | "
                     f"{', '.join(f'{v:.1f}' for v in s['ss'])} | {s['ss_mean']:.1f} | "
                     f"{100 * s['moved']:.0f}% | {s['distance']:.1f} | {lms} | "
                     f"{s['fit_s']:.0f} |")
    if plot:
        lines += ["", "Each recipe's mean distance from 50 against the held-out LMS it cost "
                  "(whiskers: the distances its seeds span; dotted: the 1-point limit).", "",
                  f"![every recipe]({plot})"]
    return "\n".join(lines) + "\n"


def plot_points(summaries: list[dict]) -> dict[str, dict]:
    """The trade-off plot's points, one per row with a held-out LMS: labelled by the recipe's
    name (× its seeds); a name run again after a default changed also by its layer and weights
    (and options, where those alone differ), so that no row's point replaces another's."""
    points: dict[str, dict] = {}
    for s in summaries:
        if s["lms_drop"] is None:
            continue
        base = s["name"] + (f" ×{len(s['ss'])}" if len(s["ss"]) > 1 else "")
        # The last is unique: a row is its name (with its patch), options, layer and weights.
        labels = (base, f"{base} (layer {s['layer']}; {s['weights']})",
                  f"{base} (layer {s['layer']}; {s['weights']}; {s['options']})")
        label = next((a for a in labels if a not in points), labels[-1])
        points[label] = {"ss": s["ss_mean"], "lms_drop": s["lms_drop"],
                         **({"ss_range": (min(s["ss"]), max(s["ss"]))} if len(s["ss"]) > 1
                            else {})}
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_table_arguments(parser)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    slug = table_slug(args.model, args.bias_types, args.folds)
    rows = collect(args.results, slug)
    if not rows:
        parser.error(f"no records under {args.results}/generalisation-{slug}*")
    summaries = sorted((summarise(k, v) for k, v in rows.items()),
                       key=lambda s: abs(s["ss_mean"] - 50))
    points = plot_points(summaries)
    title = (f"Every FAST recipe cross-validated — {args.model}, StereoSet dev {args.bias_types}, "
             f"{args.folds}-fold cross-validation by target")
    plot = recipe_tradeoff(points, args.results / f"recipes-{slug}.png",
                           title=f"FAST recipes, {args.model}, {args.bias_types}: "
                                 f"{args.folds}-fold CV, mean over seeds",
                           before=summaries[0]["before"])
    text = table(title, summaries, plot.name if plot is not None else None)
    atomic_write_text(args.results / f"recipes-{slug}.md", text)
    print(text)


if __name__ == "__main__":
    main()
