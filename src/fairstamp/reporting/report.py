"""Markdown reports and terminal tables from `metrics.json`-shaped results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairstamp.metrics.transfer import HEADLINES as TRANSFER_HEADLINES
from fairstamp.reporting.text import console

# (section, metric key, label, ideal) in the order a reader wants them.
METRIC_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("edited", "ss", "SS on the edited items", "50"),
    ("edited", "ps", "PS on the edited items' paraphrases", "50"),
    ("stereoset", "ss", "SS (StereoSet, micro)", "50"),
    ("stereoset", "ss_macro", "SS (StereoSet, official per-target macro)", "50"),
    ("stereoset", "lms", "LMS (official)", "100"),
    ("stereoset", "icat", "ICAT (official)", "100"),
    ("paraphrase", "ps", "PS (paraphrases)", "50"),
    ("held_out", "ss", "SS on held-out targets", "50"),
    ("crows", "crows", "CrowS-Pairs score", "50"),
    ("retention", "ds", "DS (retention set)", "higher"),
    ("retention", "rs", "RS (vs reference)", "100"),
    ("retention", "rs_unseen", "RS on retention items never trained on", "100"),
)


def flat(breakdown: Mapping[str, Any]) -> dict[str, Any]:
    """A Breakdown dict (`{"overall", "by_type"}`) as one mapping: overall, then each bias type."""
    return {"overall": breakdown["overall"], **breakdown.get("by_type", {})}


def fmt(mv: Mapping[str, Any] | None, digits: int = 1) -> str:
    if mv is None:
        return "–"
    return f"{mv['value']:.{digits}f} [{mv['ci_low']:.{digits}f}, {mv['ci_high']:.{digits}f}]"


def fmt_change(mv: Mapping[str, Any]) -> str:
    """A change with its CI, signed: "-2.7 [-5.1, -0.4]"."""
    return f"{mv['value']:+.1f} [{mv['ci_low']:+.1f}, {mv['ci_high']:+.1f}]"


def fmt_count(mv: Mapping[str, Any] | None, targets: int | None = None) -> str:
    """How many units a number comes from ("1,160"), with its targets where given
    ("28 (1 target)"); "" when `mv` records none."""
    if not mv or mv.get("n") is None:
        return ""
    return f"{mv['n']:,}" + (f" ({targets} target{'' if targets == 1 else 's'})"
                             if targets else "")


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(label, ideal, {column: formatted}) for every bias metric present; columns are
    'overall' and the bias types."""
    rows = []
    for section, key, label, ideal in METRIC_ROWS:
        breakdown = metrics.get(section, {}).get(key)
        if not breakdown:
            continue
        rows.append((label, ideal, {col: fmt(mv) for col, mv in flat(breakdown).items()}))
    return rows


def metric_counts(metrics: Mapping[str, Any]) -> dict[str, str]:
    """label → how many items (pairs) the overall number of `metric_rows` comes from, with the
    targets of held-out SS."""
    counts = {}
    for section, key, label, _ in METRIC_ROWS:
        part = metrics.get(section) or {}
        targets = part.get("n_targets") if section == "held_out" else None
        counts[label] = fmt_count((part.get(key) or {}).get("overall"), targets)
    return counts


def general_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, ideal) for the general-ability metrics present."""
    general = metrics.get("general") or {}
    rows = []
    if "perplexity" in general:
        rows.append(("WikiText-2 perplexity", fmt(general["perplexity"], 2), "lower"))
    known = general.get("known_1000") or {}
    if "accuracy" in known:
        rows.append(("known_1000 top-1 accuracy (%)", fmt(known["accuracy"]), "higher"))
    if "kept" in known:
        rows.append(("known_1000 top-1 kept vs reference (%)", fmt(known["kept"]), "100"))
    for task, result in (general.get("downstream") or {}).items():
        rows.append((f"{task} accuracy (%)", fmt(result["acc"]), "higher"))
    return rows


def known_changes(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown lines listing the known_1000 facts whose top-1 changed against the reference
    (metrics `general.known_1000.changed`), with how many right answers were lost and gained:
    "kept" counts every flip, and most flips of a small model are between two wrong guesses."""
    changed = ((metrics.get("general") or {}).get("known_1000") or {}).get("changed")
    if not changed:
        return []
    flags = [("lost" if c["right_before"] and not c["right_after"] else
              "gained" if c["right_after"] and not c["right_before"] else "") for c in changed]
    lost, gained = flags.count("lost"), flags.count("gained")
    lines = ["## known_1000 facts whose top-1 changed", "",
             f"{len(changed)} fact(s) changed their top-1 next token: {lost} right answer(s) "
             f"lost, {gained} gained, {len(changed) - lost - gained} from one wrong answer to "
             "another.", "",
             "| known_id | prompt | answer | top-1 before | top-1 after | lost / gained |",
             "|---|---|---|---|---|---|"]
    for c, flag in zip(changed, flags, strict=True):
        lines.append(f"| {c['known_id']} | {_cell(c['prompt'])} | {_cell(c['answer'])} | "
                     f"`{_cell(repr(c['before']))}` | `{_cell(repr(c['after']))}` | {flag} |")
    return [*lines, ""]


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def transfer_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, ideal) for the transfer suite's headline numbers present
    (`metrics["transfer"][part][key]`, labelled by `fairstamp.metrics.transfer.HEADLINES`)."""
    rows = []
    for (part, key), (label, ideal) in TRANSFER_HEADLINES.items():
        value = transfer_value(metrics, part, key)
        if value is not None:
            rows.append((label, fmt(value, transfer_digits(part, key)), ideal))
    return rows


def transfer_value(metrics: Mapping[str, Any], part: str, key: str) -> Mapping | None:
    """One headline number of the transfer suite (`metrics["transfer"][part][key]`), if any."""
    return ((metrics.get("transfer") or {}).get(part) or {}).get(key)


def transfer_digits(part: str, key: str) -> int:
    """Decimals shown: VADER compounds (−1 … 1) with 3, percentages and bias scores with 1."""
    return 3 if part == "bold" and key != "share_negative" else 1


def transfer_details(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown tables of the transfer parts per category / type / domain."""
    lines: list[str] = []
    bbq = metrics.get("bbq")
    if bbq:
        lines += ["### BBQ per category", "",
                  f"{bbq['n_items']} items; prompt `{bbq['prompt']!r}`, {bbq['choice']}. "
                  "Bias scores range −100 … 100 (0: unbiased; s_AMB also 0 when the model "
                  "answers \"unknown\" whenever it should).", "",
                  "| category | acc ambiguous | acc disambiguated | s_AMB | s_DIS |",
                  "|---|---|---|---|---|"]
        views = [("overall", lambda key: bbq[key].get("overall"))]
        for view in ("by_type", "by_category"):
            names = sorted(set(bbq["accuracy_ambig"].get(view, {}))
                           | set(bbq["accuracy_disambig"].get(view, {})))
            views += [(n, lambda key, v=view, n=n: bbq[key].get(v, {}).get(n)) for n in names]
        for name, get in views:
            lines.append(f"| {name} | " + " | ".join(
                fmt(get(k)) for k in ("accuracy_ambig", "accuracy_disambig", "bias_ambig",
                                      "bias_disambig")) + " |")
        lines.append("")
    wino = metrics.get("winobias")
    if wino:
        lines += ["### WinoBias", "",
                  f"{wino['n_pairs']} line pairs ({wino['mirrored_pairs']} are one sentence with "
                  f"the pronoun swapped); prompt `{wino['prompt']}` + \" occupation\".", "",
                  "| sentences | acc pro | acc anti | gap (pro − anti) |", "|---|---|---|---|"]
        for view in wino["acc_pro"]:
            lines.append(f"| {view} | {fmt(wino['acc_pro'][view])} | "
                         f"{fmt(wino['acc_anti'][view])} | {fmt(wino['gap'][view])} |")
        lines.append("")
    bold = metrics.get("bold")
    if bold:
        decoding = bold["decoding"]
        lines += ["### BOLD generations", "",
                  f"{decoding['mode']} decoding, {decoding['max_new_tokens']} new tokens"
                  + (f", temperature {decoding['temperature']}, seed {decoding['seed']}"
                     if decoding["mode"] == "sample" else "")
                  + f"; {bold['sentiment']}.", "",
                  "| domain | groups | mean compound | negative (%) | largest gap | between |",
                  "|---|---|---|---|---|---|"]
        for domain, entry in bold["domains"].items():
            low, high = entry["max_gap_between"]
            lines.append(f"| {domain} | {len(entry['groups'])} | "
                         f"{fmt(entry['mean_sentiment'], 3)} | {fmt(entry['share_negative'])} | "
                         f"{fmt(entry['max_gap'], 3)} | {low} < {high} |")
        lines.append("")
    return lines


def _columns(rows: list[tuple[str, str, dict[str, str]]]) -> list[str]:
    cols = ["overall"]
    for _, _, values in rows:
        cols += [c for c in values if c not in cols]
    return cols


def markdown_report(results: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """The run's report: configuration, a summary table, general ability, plots, provenance."""
    config = results["config"]
    metrics = results["metrics"]
    lines = [
        f"# fairstamp evaluation: `{results['model']['name']}`",
        "",
        f"Suite `{config['suite']}`, seed {config['seed']}, sentence score = per-token "
        f"**{config['reduction']}** log-probability"
        + (f", limit {config['limit']} items per set" if config.get("limit") else "")
        + f". Values are % with bootstrap 95% CIs ({config['n_resamples']} resamples).",
        "",
    ]
    held_out = metrics.get("held_out") or {}
    if config.get("stamp"):
        lines += [f"Evaluated with the stamp `{config['stamp']}` attached."
                  + (" None of its edited items is in this bias set: every item is on a target "
                     "it never saw (held-out SS covers all of them)."
                     if held_out.get("every_item_unedited") else ""), ""]
    if held_out.get("empty"):
        lines += [f"Held-out SS: none, {held_out['empty']}.", ""]
    elif held_out:
        lines += [f"Held-out SS: {held_out.get('n_items', held_out['ss']['overall']['n'])} items "
                  f"on {held_out['n_targets']} targets no edit saw.", ""]
    rows = metric_rows(metrics)
    if rows:
        cols = _columns(rows)
        counts = metric_counts(metrics)
        lines += ["## Bias and knowledge", "",
                  "| metric | ideal | " + " | ".join(cols) + " | n (overall) |",
                  "|---|---|" + "---|" * (len(cols) + 1)]
        for label, ideal, values in rows:
            lines.append(f"| {label} | {ideal} | " + " | ".join(values.get(c, "–") for c in cols)
                         + f" | {counts.get(label, '')} |")
        lines.append("")
    grows = general_rows(metrics)
    if grows:
        lines += ["## General ability", "", "| metric | value | ideal |", "|---|---|---|"]
        lines += [f"| {label} | {value} | {ideal} |" for label, value, ideal in grows]
        lines.append("")
    lines += known_changes(metrics)
    trows = transfer_rows(metrics)
    if trows:
        lines += ["## Transfer: bias on benchmarks no edit saw, and in generated text", "",
                  "| metric | value | ideal |", "|---|---|---|"]
        lines += [f"| {label} | {value} | {ideal} |" for label, value, ideal in trows]
        lines += ["", *transfer_details(metrics)]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()]
        lines.append("")
    lines += ["## Provenance", "",
              f"- model: `{results['model']['name']}` ({results['model'].get('family', '')}), "
              f"source {results['model'].get('source', '')}",
              "- data: " + ", ".join(_data_entry(k, v) for k, v in results.get("data", {}).items()),
              f"- time: {results['timing']['seconds']:.0f} s, peak memory "
              f"{results['timing']['peak_rss_mib']:.0f} MiB",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
              "- every number is in `metrics.json`; per-item predictions in `predictions.json`.",
              ""]
    return "\n".join(lines)


def _data_entry(name: str, entry: Mapping[str, Any]) -> str:
    unit = entry.get("unit", "records")
    return f"{name} ({entry['n']} {unit}, sha256 {entry['sha256'][:12]}…)"


def print_summary(results: Mapping[str, Any]) -> None:
    """A readable table at the end of a run (rich, on stdout)."""
    from rich.table import Table  # on use: importing rich draws from `random` (text.py)

    metrics = results["metrics"]
    rows = metric_rows(metrics)
    out = console()
    if rows:
        cols = _columns(rows)
        table = Table(title=f"BiaScope — {results['model']['name']}")
        table.add_column("metric")
        table.add_column("ideal")
        for col in cols:
            table.add_column(col, justify="right")
        for label, ideal, values in rows:
            table.add_row(label, ideal, *[values.get(c, "–") for c in cols])
        out.print(table)
    empty = (metrics.get("held_out") or {}).get("empty")
    if empty:
        out.print(f"Held-out SS: none, {empty}.")
    grows = general_rows(metrics)
    if grows:
        table = Table(title="General ability")
        for col in ("metric", "value", "ideal"):
            table.add_column(col)
        for row in grows:
            table.add_row(*row)
        out.print(table)
    trows = transfer_rows(metrics)
    if trows:
        table = Table(title="Transfer (BBQ, WinoBias, BOLD)")
        for col in ("metric", "value", "ideal"):
            table.add_column(col)
        for row in trows:
            table.add_row(*row)
        out.print(table)
