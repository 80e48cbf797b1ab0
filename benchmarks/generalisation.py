"""Which FAST recipe generalises: each recipe cross-validated by target (runs/folds.py) on the
same items, layer, text and seed, so that every target is scored by a stamp that never saw it.

A recipe is a name and FitConfig overrides (`--recipe both=pairs=both`), plus `layer=N` for the
stamp's layer (else the one `fairstamp debias` picks untraced: the model's measured layer or the
`two-thirds` rule's); every recipe runs with the quick start's training length (`--max-steps
60`) unless it says otherwise. `--seed` is the
run's (the folds' targets, each stamp's initialisation and minibatches); a recipe cannot set it,
so a second seed is a second results file (`-seed<N>` in its name). The table: the
pooled held-out SS and LMS before and after, per bias type, with CIs, and the fit time. A
finished recipe (its JSON in the results folder) is not run again, and neither is a finished fold
of an unfinished one (kept beside it until the recipe ends), so an interrupted run resumes; when
every recipe is finished the model is not loaded, and the table and plot are rebuilt from the
JSON.

Usage: python benchmarks/generalisation.py [--model smollm2-135m] [--bias-types gender]
           [--folds 5] [--seed 0] [--recipe NAME=KEY=VALUE,KEY=VALUE ...]
           [--monitor] [--out benchmarks/results]
Writes benchmarks/results/generalisation-<model>-<bias types>-cv<K>[-seed<N>].{json,md,png}
(the png: each recipe's held-out SS against the LMS it cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

from fairstamp.errors import FairstampError
from fairstamp.fast.train import for_model
from fairstamp.methods import get_method
from fairstamp.models import load
from fairstamp.reporting.plots import recipe_tradeoff
from fairstamp.reporting.report import fmt_change
from fairstamp.runs.config import EditRunConfig, choose_layer
from fairstamp.runs.folds import FoldResult, cross_validate
from fairstamp.runs.setup import prepare_edit
from fairstamp.utils.io import atomic_write_json, atomic_write_text
from fairstamp.utils.logs import setup_logging
from fairstamp.utils.repro import library_versions

HERE = Path(__file__).resolve().parent


def parse_recipe(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    options = dict(part.split("=", 1) for part in settings.split(",") if part)
    return name, options


class FoldStore:
    """A recipe's finished folds, one JSON each, so that an interrupted recipe resumes at its
    first unfinished fold; a fold stored with other settings is refused, not reused."""

    def __init__(self, folder: Path, options: dict[str, str]) -> None:
        self.folder, self.options = folder, options

    def get(self, fold: int) -> FoldResult | None:
        path = self.folder / f"fold{fold + 1}.json"
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        if stored["options"] != self.options:
            raise FairstampError(f"{path} was run with {stored['options']}, not "
                                 f"{self.options}; remove it to run this recipe")
        return FoldResult(stored["record"], stored["scores"])

    def put(self, fold: int, result: FoldResult) -> None:
        atomic_write_json(self.folder / f"fold{fold + 1}.json",
                          {"options": self.options, "record": result.record,
                           "scores": result.scores})

    def clear(self) -> None:
        for path in self.folder.glob("fold*.json"):
            path.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def recipe_layer_of(config: EditRunConfig, text: str, loaded) -> int:
    """A recipe's `layer=N`, range-checked as `fairstamp debias --layer N` is."""
    try:
        given = int(text)
    except ValueError:
        raise FairstampError(f"layer={text}: not a whole number") from None
    return choose_layer(replace(config, layer=given), loaded.num_layers, loaded.name)[0]


def fmt(mv: dict | None) -> str:
    return "–" if mv is None else f"{mv['value']:.1f} [{mv['ci_low']:.1f}, {mv['ci_high']:.1f}]"


def tradeoff_points(rows: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Each recipe's pooled held-out SS after and the held-out LMS it cost."""
    points = {}
    for name, r in rows.items():
        cv = r["cross_validation"]
        lms_before, lms_after = (cv[side].get("lms", {}).get("overall") for side in
                                 ("before", "after"))
        if lms_before is None or lms_after is None:
            continue
        points[name] = {"ss": cv["after"]["ss"]["overall"]["value"],
                        "lms_drop": lms_before["value"] - lms_after["value"]}
    return points


def moved(before: float, after: float) -> float:
    """The share of the way from `before` to 50 that `after` went (negative: away)."""
    return (abs(before - 50) - abs(after - 50)) / max(abs(before - 50), 1e-9)


def fold_distance(per_fold: list[dict], ss: list[float | None]) -> float | None:
    """The folds' mean |held-out SS − 50| (`ss`, one per fold), each fold weighted by its
    held-out items: unlike the pooled SS, one fold's overshoot below 50 cannot cancel another's
    shortfall. None where a fold's SS is unknown."""
    if any(v is None for v in ss):
        return None
    total = sum(f["n_held_out"] for f in per_fold)
    return sum(f["n_held_out"] * abs(v - 50) for f, v in zip(per_fold, ss)) / max(total, 1)


def table(model: str, bias_types: str, folds: int, rows: dict[str, dict],
          plot: str | None = None, seed: int = 0) -> str:
    lines = [f"# Generalisation by recipe — {model}, StereoSet dev {bias_types}, {folds}-fold "
             "cross-validation by target" + (f", seed {seed}" if seed else ""), "",
             "Command: `python benchmarks/generalisation.py` (each recipe: one stamp per fold, "
             "trained on the other folds' targets; every item scored by the stamp that never "
             "saw its target; SS/LMS pooled over all items, 95% bootstrap CIs; the change's CI is "
             "paired: items resampled with both of their scores; – where not recorded). "
             "Fold distance from 50: the folds' held-out |SS − 50|, weighted by their items, "
             "before → after (one fold's overshoot below 50 cannot offset another's "
             "shortfall, as it can in the pooled SS). "
             "Settings are overrides of FAST's defaults when the row ran (its JSON's `fit` "
             "holds them all from L_c's default on); the rows without `fit` ran before L_c "
             "became the default, against α = 1 and no L_c: `attribute` there is that old "
             "default, and `cf3a3` is today's. `check_every` 0 (automatic) checked every "
             "max(10, ⌈items / 40⌉) steps in rows run before 2026-12-05 and checks every 5 "
             "steps up to 400 edited items since (each fold's `edit.checks` lists its steps).",
             "",
             "| recipe | settings | held-out SS before | held-out SS after | change [paired CI] | "
             "moved to 50 | fold distance from 50 | held-out LMS before | after | "
             "fit s (all folds) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    # The unedited model's SS on a fold's targets, from whichever rows recorded it (rows of one
    # table share their folds: the targets are dealt by the seed).
    unedited = {tuple(f["held_out_targets"]): f["held_out_ss_before"] for r in rows.values()
                for f in r["cross_validation"]["per_fold"] if "held_out_ss_before" in f}
    for name, r in rows.items():
        cv = r["cross_validation"]
        b, a = cv["before"]["ss"]["overall"], cv["after"]["ss"]["overall"]
        per_fold = cv["per_fold"]
        distance = " → ".join("–" if d is None else f"{d:.1f}" for d in (
            fold_distance(per_fold, [unedited.get(tuple(f["held_out_targets"])) for f in per_fold]),
            fold_distance(per_fold, [f["held_out_ss"] for f in per_fold])))
        settings = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "default"
        fit_s = sum(f["fit_seconds"] for f in cv["per_fold"])
        change = (cv.get("change") or {}).get("ss")
        change_text = "–" if change is None else fmt_change(change["overall"])
        lines.append(f"| {name} | {settings} | {fmt(b)} | {fmt(a)} | {change_text} | "
                     f"{100 * moved(b['value'], a['value']):.0f}% | {distance} | "
                     f"{fmt(cv['before'].get('lms', {}).get('overall'))} | "
                     f"{fmt(cv['after'].get('lms', {}).get('overall'))} | {fit_s:.0f} |")
    types = sorted({t for r in rows.values()
                    for t in r["cross_validation"]["after"]["ss"]["by_type"]})
    if len(types) > 1:
        lines += ["", "Per bias type (held-out SS after):", "",
                  "| recipe | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for name, r in rows.items():
            by = r["cross_validation"]["after"]["ss"]["by_type"]
            lines.append(f"| {name} | " + " | ".join(fmt(by.get(t)) for t in types) + " |")
    if plot:
        lines += ["", "The trade-off: each recipe's distance from 50 against the LMS it cost "
                  "(dotted: the 1-point limit).", "", f"![trade-off]({plot})"]
    return "\n".join(lines) + "\n"


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name a results table: model, bias types, folds."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bias-types", default="gender")
    parser.add_argument("--folds", type=int, default=5)


def table_slug(model: str, bias_types: str, folds: int, seed: int = 0) -> str:
    """The results table's name: a folder or hub id names it by its last part
    ("EleutherAI/pythia-160m" → pythia-160m); a seed other than 0 adds `-seed<N>`."""
    return (f"{Path(model).name}-{bias_types.replace(',', '-')}-cv{folds}"
            + (f"-seed{seed}" if seed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_table_arguments(parser)
    parser.add_argument("--max-steps", default="60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", action="append", default=None,
                        help="NAME=KEY=VALUE,... (FitConfig overrides); repeatable")
    parser.add_argument("--monitor", action="store_true",
                        help="score each fold's held-out items at every training check and "
                             "record their SS in the fold's `checks` (a learning curve on "
                             "unseen targets; nothing reads it to choose)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    setup_logging(logging.INFO, show_library_progress=False)
    recipes = dict(parse_recipe(r) for r in (args.recipe or ["attribute=", "both=pairs=both"]))
    recipes = {name: {"max_steps": args.max_steps, **options} for name, options in recipes.items()}
    methods = {}
    for name, options in recipes.items():  # a bad knob (or seed=, the run's) fails before work
        try:
            methods[name] = get_method("fast", **{k: v for k, v in options.items() if k != "layer"})
        except FairstampError as error:
            parser.error(f"--recipe {name}: {error}")
    slug = table_slug(args.model, args.bias_types, args.folds, args.seed)
    cache = args.out / f"generalisation-{slug}"
    config = EditRunConfig(model=args.model, bias_types=args.bias_types.split(","),
                           folds=args.folds, seed=args.seed)
    rows = {name: json.loads((cache / f"{name}.json").read_text()) for name in recipes
            if (cache / f"{name}.json").is_file()}
    todo = {name: options for name, options in recipes.items() if name not in rows}
    loaded = setup = None
    layers: dict[str, int] = {}
    if todo:  # the model is loaded only for recipes left to run: finished ones rebuild the table
        loaded = load(args.model)
        setup = prepare_edit(config)
        layer, _ = choose_layer(config, loaded.num_layers, loaded.name)
        # Every recipe's layer is checked before the first one runs.
        layers = {name: layer if "layer" not in options else recipe_layer_of(
            config, options["layer"], loaded) for name, options in todo.items()}
    for name, options in todo.items():
        path = cache / f"{name}.json"
        clock = time.perf_counter()
        method = methods[name]
        store = FoldStore(cache / f"{name}.folds", options)
        cv = cross_validate(
            loaded, setup.items,
            lambda items, at=layers[name]: setup.context(loaded, at, seed=config.seed,
                                                         items=items),
            method.fit, folds=args.folds, seed=config.seed, n_resamples=config.n_resamples,
            finished=store.get, on_fold=store.put, monitor=args.monitor)
        # As trained: what the recipe leaves to the model and the edit (λ, δ) filled in.
        fit = asdict(for_model(method.seeded_config(config.seed), loaded.name,
                               [i.bias_type for i in setup.items]))
        rows[name] = {"recipe": name, "options": options, "fit": fit,
                      "layer": layers[name], "seed": config.seed,
                      "seconds": round(time.perf_counter() - clock, 1), "cross_validation": cv,
                      "versions": library_versions()}
        atomic_write_json(path, rows[name])
        store.clear()
    rows = {name: rows[name] for name in recipes}  # the order the recipes were given
    atomic_write_json(args.out / f"generalisation-{slug}.json", rows)
    before = next(iter(rows.values()))["cross_validation"]["before"]["ss"]["overall"]["value"]
    plot = recipe_tradeoff(tradeoff_points(rows), args.out / f"generalisation-{slug}.png",
                           title=f"FAST recipes, {args.model}, {args.bias_types}: "
                                 f"{args.folds}-fold CV by target", before=before)
    text = table(args.model, args.bias_types, args.folds, rows,
                 plot=plot.name if plot is not None else None, seed=args.seed)
    atomic_write_text(args.out / f"generalisation-{slug}.md", text)
    print(text)


if __name__ == "__main__":
    main()
