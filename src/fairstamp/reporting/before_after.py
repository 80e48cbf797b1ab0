"""Before/after tables, report and plots of a `fairstamp debias` run (its metrics.json)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairstamp.reporting.report import (
    METRIC_ROWS,
    TRANSFER_HEADLINES,
    flat,
    fmt,
    fmt_change,
    fmt_count,
    known_changes,
    transfer_digits,
    transfer_value,
)


def _value(mv: Mapping[str, Any] | None) -> float | None:
    return None if mv is None else mv.get("value")


def _general_values(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping | None, str]]:
    general = metrics.get("general") or {}
    known = general.get("known_1000") or {}
    rows = [("WikiText-2 perplexity", general.get("perplexity"), "lower"),
            ("known_1000 top-1 accuracy (%)", known.get("accuracy"), "higher"),
            ("known_1000 top-1 kept (%)", known.get("kept"), "100")]
    for task, result in (general.get("downstream") or {}).items():
        rows.append((f"{task} accuracy (%)", result.get("acc"), "higher"))
    return rows


def comparison_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, ideal, before, after, change, n) for every overall number present in either run;
    n is how many units the number and its CI come from (items, pairs; perplexity: windows),
    with the targets of held-out SS."""
    before, after = metrics["before"]["metrics"], metrics["after"]["metrics"]
    rows = []
    for section, key, label, ideal in METRIC_ROWS:
        b = (before.get(section) or {}).get(key)
        a = (after.get(section) or {}).get(key)
        if not (a or b):
            empty = (after.get(section) or {}).get("empty")
            if empty:  # a section with nothing to score says why
                rows.append((label, ideal, "–", "–", f"none: {empty}", "0"))
            continue
        b_mv, a_mv = (b or {}).get("overall"), (a or {}).get("overall")
        targets = (after.get(section) or {}).get("n_targets") if section == "held_out" else None
        rows.append((label, ideal, fmt(b_mv), fmt(a_mv), _delta(b_mv, a_mv),
                     fmt_count(a_mv or b_mv, targets)))
    for (label, b_mv, ideal), (_, a_mv, _) in zip(_general_values(before),
                                                   _general_values(after)):
        if b_mv is None and a_mv is None:
            continue
        digits = 2 if "perplexity" in label else 1
        rows.append((label, ideal, fmt(b_mv, digits), fmt(a_mv, digits),
                     _delta(b_mv, a_mv, digits, relative="perplexity" in label),
                     fmt_count(a_mv or b_mv)))
    for (part, key), (label, ideal) in TRANSFER_HEADLINES.items():
        b_mv, a_mv = transfer_value(before, part, key), transfer_value(after, part, key)
        if b_mv is None and a_mv is None:
            continue
        digits = transfer_digits(part, key)
        rows.append((label, ideal, fmt(b_mv, digits), fmt(a_mv, digits),
                     _delta(b_mv, a_mv, digits), fmt_count(a_mv or b_mv)))
    return rows


def _delta(b: Mapping | None, a: Mapping | None, digits: int = 1, relative: bool = False) -> str:
    bv, av = _value(b), _value(a)
    if bv is None or av is None:
        return "–"
    text = f"{av - bv:+.{digits}f}"
    if relative and bv:
        text += f" ({100 * (av - bv) / bv:+.1f}%)"
    return text


def per_type_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, bias type, before, after) for the bias metrics, per bias type."""
    before, after = metrics["before"]["metrics"], metrics["after"]["metrics"]
    rows = []
    for section, key, label, _ in METRIC_ROWS:
        b = (before.get(section) or {}).get(key)
        a = (after.get(section) or {}).get(key)
        if not (a and b):
            continue
        for bias_type in (a.get("by_type") or {}):
            rows.append((label, bias_type, fmt(b["by_type"].get(bias_type)),
                         fmt(a["by_type"].get(bias_type))))
    return rows


def cross_validation_rows(cv: Mapping[str, Any] | None
                          ) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, bias type, ideal, before, after, change) of a run's cross-validation by target:
    every item scored by the stamp fitted without its target."""
    if not cv:
        return []
    rows = []
    for key, label, ideal in (("ss", "SS, held out (CV)", "50"), ("lms", "LMS, held out (CV)",
                                                                   "100")):
        b, a = cv["before"].get(key), cv["after"].get(key)
        if not (a and b):
            continue
        for name in ("overall", *a.get("by_type", {})):
            b_mv = b["overall"] if name == "overall" else b["by_type"].get(name)
            a_mv = a["overall"] if name == "overall" else a["by_type"].get(name)
            change = (cv.get("change") or {}).get(key)  # with its paired CI, when recorded
            c_mv = (change["overall"] if name == "overall" else
                    change["by_type"].get(name)) if change else None
            rows.append((label, name, ideal, fmt(b_mv), fmt(a_mv),
                         fmt_change(c_mv) if c_mv else _delta(b_mv, a_mv)))
    return rows


def before_after_plots(metrics: Mapping[str, Any], folder: Path,
                       trace: Any = None) -> dict[str, str]:
    """Before/after bars of the bias metrics, the training curve and the layer profile."""
    from fairstamp.reporting import plots as P

    folder.mkdir(parents=True, exist_ok=True)
    name = metrics["model"]["name"]
    before, after = metrics["before"]["metrics"], metrics["after"]["metrics"]
    out: dict[str, str] = {}
    for section, key, label, file in (("edited", "ss", "SS on the edited items", "edited_ss"),
                                      ("edited", "ps", "PS on their paraphrases", "edited_ps"),
                                      ("held_out", "ss", "SS on held-out targets", "held_out_ss"),
                                      ("stereoset", "lms", "LMS (official)", "lms")):
        b = (before.get(section) or {}).get(key)
        a = (after.get(section) or {}).get(key)
        if not (a and b):
            continue
        P.bars_with_ideal({"before": flat(b), "after": flat(a)}, folder / f"{file}.png",
                          title=f"{label} — {name}", ylabel="%",
                          ideal=100.0 if key == "lms" else 50.0)
        out[f"{label}, before and after"] = f"plots/{file}.png"
    cv = metrics.get("cross_validation")
    if cv and cv["after"].get("ss"):
        P.bars_with_ideal({"before": flat(cv["before"]["ss"]), "after": flat(cv["after"]["ss"])},
                          folder / "cross_validated_ss.png",
                          title=f"SS on held-out targets, {cv['folds']}-fold CV — {name}",
                          ylabel="%", ideal=50.0)
        out["SS on held-out targets (cross-validated), before and after"] = \
            "plots/cross_validated_ss.png"
        if P.held_out_curves(cv["per_fold"], folder / "cross_validated_curves.png",
                             title=f"Held-out SS while each fold's stamp trains — {name}",
                             before=cv["before"]["ss"]["overall"]["value"]):
            out["SS on held-out targets at every training check (cross-validated)"] = \
                "plots/cross_validated_curves.png"
    history = metrics.get("history") or []
    if history:
        P.training_curve(history, folder / "training.png",
                         title=f"Stamp training at layer {metrics['layer']} — {name}")
        out["Training: edited items' SS and loss terms"] = "plots/training.png"
    if trace is not None:
        P.layer_profiles({c: list(v) for c, v in trace.average.items()},
                         folder / "layer_profile.png", chosen=metrics["layer"],
                         chosen_label=f"stamp layer, {metrics.get('layer_source', 'chosen')}",
                         peak=trace.decisive_layer("mlp") if "mlp" in trace.components else None,
                         title=f"Bias causal trace (mean restored share of the gap) — {name}")
        out["Bias causal trace: effect per layer"] = "plots/layer_profile.png"
    return out


def before_after_report(metrics: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    config, fit = metrics["config"], metrics["fit"]
    # The first check falls at the interval's step; with one check only, the interval is unknown
    # (it exceeded the steps run, and the last step was checked instead).
    checks = [c["step"] for c in metrics.get("history") or []]
    every = (f"SS checked every {checks[0]} steps, " if len(checks) > 1 and "tokens" in fit
             else "")
    lines = [
        f"# fairstamp debias: `{metrics['model']['name']}`",
        "",
        f"Data `{config['data']}`, bias types {', '.join(config['bias_types'] or ['all'])}, "
        f"seed {config['seed']}. {metrics['n_edited']} items edited with one stamp (width "
        f"{metrics['stamp']['width']}, {metrics['stamp']['parameters']:,} parameters) after the "
        f"MLP of layer {metrics['layer']} ({metrics['layer_source']}); "
        + (f"batch lean λ = {metrics['sign_weight']:g} ({metrics['sign_weight_source']}); "
           if metrics.get("sign_weight") else "")
        + (f"L_c's weight δ = {fit['counterfactual_weight']:g} "
           f"({metrics['counterfactual_weight_source']}); "
           if metrics.get("counterfactual_weight_source", "default") != "default" else "")
        + f"{fit['steps']} "
        + (f"of at most {fit['step_limit']} " if fit.get("step_limit") else "")
        + f"training steps in {fit['seconds']:.0f} s ("
        + (f"{every}{fit['check_seconds']:.0f} s of them the checks; {fit['tokens']:,} tokens "
           "through the layers above the stamp; " if "tokens" in fit else "")
        + f"+{fit['setup_seconds']:.0f} s setup), stopped: {fit['stopped']}; kept the check of "
        f"step {fit.get('kept_step', fit['steps'])}.",
        "",
        "Values are % with bootstrap 95% CIs, before → after the stamp; sentence score = "
        f"per-token {metrics['before']['config']['reduction']} log-probability.",
        "",
    ]
    if metrics.get("crows_training"):
        lines += ["**Edited on CrowS-Pairs** (explicit opt-in): its data statement asks that it "
                  "not be used to train models.", ""]
    lines += ["## Before and after", "", "n: the items (pairs; perplexity: text windows) each "
              "number and its CI come from.", "",
              "| metric | ideal | before | after | change | n |", "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in comparison_rows(metrics)]
    per_type = per_type_rows(metrics)
    if per_type:
        lines += ["", "## Per bias type", "", "| metric | bias type | before | after |",
                  "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in per_type]
    changes = known_changes(metrics["after"]["metrics"])
    if changes:
        lines += ["", *changes[:-1]]
    cv = metrics.get("cross_validation")
    if cv:
        lines += ["", f"## Cross-validation by target ({cv['folds']} folds)", "",
                  f"{cv['folds']} more stamps, each trained with one fold's targets held out "
                  f"(same layer, text, seed and training settings); every one of the "
                  f"{cv['n_items']} items is scored by the stamp that never saw its target, and "
                  "the scores are pooled. Before = the original model on the same items.", "",
                  "| metric | bias type | ideal | before | after | change |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in cross_validation_rows(cv)]
        lines += ["", "| fold | held-out targets | items edited | items held out | held-out SS "
                  "| kept step | fit s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['fold']} | {', '.join(r['held_out_targets'])} | {r['n_edit']} | "
                  f"{r['n_held_out']} | {r['held_out_ss']:.1f} | "
                  f"{r['edit'].get('kept_step', '–')} | {r['fit_seconds']:.0f} |"
                  for r in cv["per_fold"]]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()]
    timing = metrics.get("timing", {})
    lines += ["", "## Provenance", "",
              "- time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()),
              "- training settings: " + ", ".join(
                  f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                  for k, v in config["fit"].items()),
              "- versions: " + ", ".join(f"{k} {v}" for k, v in metrics["versions"].items()),
              "- the stamp: `stamp_config.json` + `stamp.safetensors` (load with "
              "`fairstamp eval --stamp` / `fairstamp generate --stamp` or "
              "`Stamp.from_pretrained`); the edited items: `edited_items.json`; every number: "
              "`metrics.json`, `before/`, `after/`.", ""]
    return "\n".join(lines)


def print_before_after(metrics: Mapping[str, Any]) -> None:
    from rich.table import Table

    from fairstamp.reporting.text import console

    table = Table(title=f"FAST on {metrics['model']['name']}: layer {metrics['layer']}, "
                  f"{metrics['n_edited']} items edited")
    for column in ("metric", "ideal", "before", "after", "change", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison_rows(metrics):
        table.add_row(*row)
    cv = metrics.get("cross_validation")
    for label, bias_type, ideal, before, after, change in cross_validation_rows(cv):
        if bias_type == "overall" or len(cv["after"]["ss"]["by_type"]) > 1:
            name = label if bias_type == "overall" else f"{label} — {bias_type}"
            ss = cv["after"]["ss"]
            table.add_row(name, ideal, before, after, change, fmt_count(
                ss["overall"] if bias_type == "overall" else ss["by_type"].get(bias_type)))
    console().print(table)
