"""Which training check to keep: rules for choosing the kept stamp, scored on the held-out curves
of a monitored cross-validation (`benchmarks/generalisation.py --monitor`).

A monitored run scores each fold's held-out items at every check of its training (a fold's
`edit.checks`: the edited items' SS and mean |gap|, and the held-out items' `monitor_ss`). With a
constant learning rate the checks of a 60-step run are those of any shorter run with the same
seed, and a check changes nothing in training, so a rule that reads only the edited items' numbers
(which check a real run would keep, when it would stop) picks a check of the curve, and that
check's `monitor_ss` is the held-out SS the real run would get: the table of each rule is what its
own cross-validation would report, without training again (tests/test_folds.py checks that the
kept check's monitored SS is the fold's held-out SS). Pooled held-out SS = the folds' SS weighted
by their items. "oracle" reads the held-out curve and is no rule: per fold, the best any choice of
check could do (pooled, a rule can come nearer 50 when folds land on both sides of it).

Usage: python benchmarks/kept_check.py CURVES.json [CURVES.json ...] [--recipe curve]
           [--out benchmarks/results/kept_check]
Writes <out>.json, <out>.md and, per curves file, <out>-<n>.png (each fold's held-out SS at every
check, the kept check marked, and the pooled curve).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fairstamp.reporting.plots import held_out_curves
from fairstamp.training.loop import LoopSettings, kept_check_key, should_stop
from fairstamp.utils.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
Check = dict[str, float]
Rule = Callable[[Sequence[Check]], Check]


def every(checks: Sequence[Check], n: int | None) -> list[Check]:
    """The checks a run checking every `n` steps would have made (and its last step's); None:
    every recorded check."""
    last = checks[-1]["step"]
    return [c for c in checks if n is None or c["step"] % n == 0 or c["step"] == last]


def keep_best(n: int | None = 10, tolerance: float = 1.0, min_steps: int = 20, flat: float = 0.05,
              stop: bool = True, smooth: int = 1, max_steps: int | None = None) -> Rule:
    """The loop's rule (training/loop.py): the check with SS nearest 50 (within `tolerance` is
    equal; then the lowest mean |gap|), training stopping at the first check from `min_steps` on
    with SS within `tolerance` and a mean |gap| no longer falling by `flat`. `smooth` > 1 reads
    the mean SS of the last `smooth` checks instead of the check's own. `max_steps`: a run of
    that many steps (with a constant learning rate, the curves' first `max_steps` steps), on
    curves that go beyond it."""

    # The loop's own key and stopping rule (training/loop.py), with these settings.
    settings = LoopSettings(ss_tolerance=tolerance, min_steps=min_steps, flat_tolerance=flat)

    def rule(checks: Sequence[Check]) -> Check | None:
        if max_steps is not None:
            # A curve that ends by max_steps is the rule without the limit (its own row).
            if checks[-1]["step"] <= max_steps:
                return None
            checks = [c for c in checks if c["step"] <= max_steps]
            if not checks or checks[-1]["step"] != max_steps:
                return None
        seen = every(checks, n)
        best, gaps = None, []
        for k, c in enumerate(seen):
            window = seen[max(0, k - smooth + 1):k + 1]
            ss = sum(w["ss"] for w in window) / len(window)
            gaps.append(c["bias_loss_all"])
            key = kept_check_key(ss, c["bias_loss_all"], settings)
            if best is None or key < best[0]:
                best = (key, c)
            if stop and should_stop(c["step"], c["ss"], gaps, settings):
                break
        return best[1]

    return rule


def lowest_gap(n: int = 10, min_steps: int = 20) -> Rule:
    """The check with the lowest mean |gap| of the edited items (None: no check from
    `min_steps` on)."""
    return lambda checks: min((c for c in every(checks, n) if c["step"] >= min_steps),
                              key=lambda c: c["bias_loss_all"], default=None)


def at_step(step: int) -> Rule:
    return lambda checks: next((c for c in checks if c["step"] == step), None)


def oracle(checks: Sequence[Check]) -> Check:
    return min(checks, key=lambda c: abs(c["monitor_ss"] - 50.0))


def as_run(fit: dict) -> Rule:
    """The rule the monitored run itself kept by (its checks, tolerance and stopping)."""
    return keep_best(n=None, tolerance=fit["ss_tolerance"], min_steps=fit["min_steps"],
                     flat=fit["flat_tolerance"], stop=True)


RULES: dict[str, tuple[Rule, str]] = {
    "every10": (keep_best(), "the loop's rule with checks every 10 steps (SS within 1 of 50, "
                             "stop): the default before 2026-12-05, and above 400 items"),
    "every5": (keep_best(n=5), "the same, checking every 5 steps: the default up to 400 items"),
    "no_stop": (keep_best(stop=False), "the same, never stopping early"),
    "tol3": (keep_best(tolerance=3.0), "SS within 3 of 50 counts as 50 (then the lowest |gap|)"),
    "tol5": (keep_best(tolerance=5.0), "SS within 5 of 50 counts as 50"),
    "tol3_every5": (keep_best(n=5, tolerance=3.0), "tol3, checking every 5 steps"),
    "smooth3": (keep_best(n=5, smooth=3), "the mean SS of the last 3 checks (every 5 steps)"),
    "lowest_gap": (lowest_gap(), "the lowest mean |gap| of the edited items (every 10, ≥ 20)"),
    "lowest_gap5": (lowest_gap(n=5), "the same, checking every 5 steps"),
    **{f"max{s}": (keep_best(max_steps=s), f"the loop's rule in a run of {s} steps")
       for s in (20, 30, 40)},
    "every5_max60": (keep_best(n=5, max_steps=60), "the loop's rule checking every 5 steps in a "
                     "run of 60 steps (FAST's automatic length up to 400 items) on longer curves"),
    **{f"step{s}": (at_step(s), f"always step {s}")
       for s in (5, 10, 20, 30, 40, 50, 60, 80, 100, 120)},
    "oracle": (oracle, "per fold, the check nearest 50 on its held-out items (reads them: "
                       "no rule; pooled SS can fall nearer 50 by folds on both sides)"),
}


def cross_validation_of(path: Path, recipe: str) -> dict:
    """The recipe's cross-validation in a generalisation JSON (all rows, or the recipe's own),
    refused unless every fold's checks were monitored."""
    rows = json.loads(path.read_text())
    row = rows.get(recipe, rows)  # a results file's rows, or one recipe's own file
    cv = row["cross_validation"]
    for f in cv["per_fold"]:
        if "monitor_ss" not in (f["edit"].get("checks") or [{}])[0]:
            raise SystemExit(f"{path}: fold {f['fold'] + 1} of {recipe!r} has no monitored "
                             "checks; run generalisation.py with --monitor")
    return {**cv, "fit": row["fit"], "seed": row["seed"]}


def pooled(folds: Sequence[dict], rule: Rule) -> tuple[float, list[int]] | None:
    """Held-out SS over all folds' items when each fold keeps the check `rule` picks, and the
    steps it picked (None where the curves have no check the rule can pick)."""
    chosen = [rule(f["edit"]["checks"]) for f in folds]
    if None in chosen:
        return None
    total = sum(f["n_held_out"] for f in folds)
    ss = sum(c["monitor_ss"] * f["n_held_out"] for c, f in zip(chosen, folds)) / total
    return ss, [int(c["step"]) for c in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", type=Path,
                        help="generalisation.py --monitor JSON files (one per seed)")
    parser.add_argument("--recipe", default="curve")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "kept_check")
    args = parser.parse_args()
    # The command that rewrites these files: the curves, and the options that differ from the
    # defaults (without --out, a rerun would write over the default results instead).
    command = " ".join(["python benchmarks/kept_check.py", *map(str, args.curves)]
                       + (["--recipe", args.recipe] if args.recipe != "curve" else [])
                       + (["--out", str(args.out)]
                          if args.out.resolve() != parser.get_default("out") else []))
    cvs = {}
    for path in args.curves:
        cv = cross_validation_of(path, args.recipe)
        cvs[f"seed {cv['seed']}" + (f" ({path.stem})" if f"seed {cv['seed']}" in cvs else "")] = cv
    runs = {name: cv["per_fold"] for name, cv in cvs.items()}
    before = {name: cv["before"]["ss"]["overall"]["value"] for name, cv in cvs.items()}
    rules = {"as_run": (None, "the rule each monitored run kept by (its own checks and settings: "
                              "its pooled held-out SS)"), **RULES}
    results = {}
    for rule_name, (rule, _) in rules.items():
        per_run = {name: pooled(folds, rule or as_run(cvs[name]["fit"]))
                   for name, folds in runs.items()}
        if None in per_run.values():
            continue
        moved = [(before[n] - ss) / (before[n] - 50.0) for n, (ss, _) in per_run.items()]
        results[rule_name] = {"runs": {n: {"ss": ss, "steps": steps}
                                       for n, (ss, steps) in per_run.items()},
                              "mean_ss": sum(ss for ss, _ in per_run.values()) / len(per_run),
                              "mean_moved": sum(moved) / len(moved)}
    atomic_write_json(args.out.with_suffix(".json"), {"before": before, "rules": results})
    names = list(runs)
    lines = [
        "# Which check to keep — held-out SS of each rule on monitored cross-validation curves",
        "",
        f"Command: `{command}` "
        "(each fold's held-out SS at the check the rule picks from the edited items' numbers; "
        "pooled over the folds' items; steps: the check each fold kept).",
        "",
        "| rule | what it keeps | " + " | ".join(f"{n}: SS (steps)" for n in names)
        + " | mean SS | moved to 50, mean |",
        "|---|---|" + "---|" * len(names) + "---|---|",
        "| before | the original model | " + " | ".join(f"{before[n]:.1f}" for n in names)
        + f" | {sum(before.values()) / len(before):.1f} | 0% |",
    ]
    for rule_name, r in results.items():
        what = rules[rule_name][1].replace("|", "\\|")  # a table cell
        cells = [f"{r['runs'][n]['ss']:.1f} ({','.join(map(str, r['runs'][n]['steps']))})"
                 for n in names]
        lines.append(f"| {rule_name} | {what} | " + " | ".join(cells)
                     + f" | {r['mean_ss']:.1f} | {100 * r['mean_moved']:.0f}% |")
    lines += ["", "Held-out SS at every check, per fold and pooled (step 0: the original model):",
              ""]
    for k, (name, cv) in enumerate(cvs.items(), start=1):
        plot = held_out_curves(cv["per_fold"], args.out.with_name(f"{args.out.name}-{k}.png"),
                               title=f"{args.recipe}, {name}: held-out SS while each fold's "
                                     "stamp trains",
                               before=before[name])
        lines.append(f"![{name}]({plot.name})")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
