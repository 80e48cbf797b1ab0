"""The bench results: one row per method (the original first), as JSON, Markdown, a terminal
table and trade-off plots (|SS − 50| against RS and against LMS)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairstamp.bench.folder import CONFIG_NAME, ORIGINAL, method_folder
from fairstamp.methods import method_names
from fairstamp.reporting.plots import tradeoff
from fairstamp.reporting.text import console
from fairstamp.utils.io import atomic_write_json, atomic_write_text
from fairstamp.utils.repro import library_versions

#: (key, header, where in metrics.json, digits); "ideal" in COLUMNS_IDEAL.
BIAS_COLUMNS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("ss_edited", "SS edited", ("edited", "ss", "overall"), 1),
    ("ps_edited", "PS edited", ("edited", "ps", "overall"), 1),
    ("ss_held_out", "SS held-out", ("held_out", "ss", "overall"), 1),
    ("ss", "SS all", ("stereoset", "ss", "overall"), 1),
    ("crows", "CrowS", ("crows", "crows", "overall"), 1),
    ("rs_unseen", "RS unseen", ("retention", "rs_unseen", "overall"), 1),
    ("ds", "DS", ("retention", "ds", "overall"), 1),
    ("lms", "LMS", ("stereoset", "lms", "overall"), 1),
    ("icat", "ICAT", ("stereoset", "icat", "overall"), 1),
    ("perplexity", "PPL", ("general", "perplexity"), 2),
    ("known_kept", "known kept", ("general", "known_1000", "kept"), 1),
)
#: The transfer suite's headline per part (shown when a row has them: suite all or transfer).
TRANSFER_COLUMNS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("bbq_s_amb", "BBQ s_AMB", ("transfer", "bbq", "bias_ambig"), 1),
    ("winobias_gap", "WinoBias gap", ("transfer", "winobias", "gap"), 1),
    ("bold_gender_gap", "BOLD gender gap", ("transfer", "bold", "max_gap_gender"), 3),
)
IDEAL = {"bbq_s_amb": "0", "winobias_gap": "0", "bold_gender_gap": "0",
         "ss_edited": "50", "ps_edited": "50", "ss_held_out": "50", "ss_held_out_cv": "50",
         "ss": "50", "crows": "50",
         "rs_unseen": "100", "ds": "↑", "lms": "↑", "icat": "↑", "perplexity": "↓",
         "known_kept": "100", "downstream": "↑"}


def _get(metrics: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node.get("value") if isinstance(node, Mapping) else None


def downstream_mean(metrics: Mapping[str, Any]) -> float | None:
    tasks = (metrics.get("general") or {}).get("downstream") or {}
    values = [t["acc"]["value"] for t in tasks.values() if t.get("acc")]
    return sum(values) / len(values) if values else None


def row_of(name: str, metrics: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": name, "status": "done"}
    for key, _, path, _ in (*BIAS_COLUMNS, *TRANSFER_COLUMNS):
        row[key] = _get(metrics, path)
    row["downstream"] = downstream_mean(metrics)
    # --folds K: SS pooled over every target, each scored by the fit that never saw it.
    row["ss_held_out_cv"] = _get(result.get("cross_validation") or {},
                                 ("after", "ss", "overall"))
    row["fit_seconds"] = result.get("fit_seconds")
    row["peak_mib"] = result.get("peak_mib")
    row["parameters_changed"] = result.get("parameters_changed")
    row["eval_seconds"] = result.get("eval_seconds")
    return row


def collect(out: Path, methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    cv_before = None  # --folds K: the original model on the same items, from any method's CV
    for name in [ORIGINAL, *methods]:
        folder = method_folder(out, name)
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
            result = json.loads((folder / "result.json").read_text())
            rows.append(row_of(name, metrics, result))
            cv_before = cv_before if cv_before is not None else _get(
                result.get("cross_validation") or {}, ("before", "ss", "overall"))
            continue
        failure = out / "failed" / f"{name}.json"
        error = json.loads(failure.read_text())["error"] if failure.is_file() else "not run"
        rows.append({"method": name, "status": "failed" if failure.is_file() else "not run",
                     "error": error})
    if rows[0]["status"] == "done" and rows[0]["ss_held_out_cv"] is None:
        rows[0]["ss_held_out_cv"] = cv_before
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _columns(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, tuple[str, ...], int], ...]:
    """The bias columns, with the cross-validated held-out SS after "SS held-out" when a row
    has it (a `--folds K` run), and the transfer columns after CrowS when a row has them."""
    columns = BIAS_COLUMNS
    if any(row.get("ss_held_out_cv") is not None for row in rows):
        at = [key for key, *_ in columns].index("ss_held_out") + 1
        columns = (*columns[:at], ("ss_held_out_cv", "SS held-out (CV)", (), 1), *columns[at:])
    transfer = tuple(c for c in TRANSFER_COLUMNS if any(row.get(c[0]) is not None
                                                           for row in rows))
    at = [key for key, *_ in columns].index("crows") + 1
    return (*columns[:at], *transfer, *columns[at:])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    headers = ["method", *(h for _, h, _, _ in columns), "downstream", "fit s", "peak MiB",
               "params changed"]
    ideal = ["ideal", *(IDEAL[k] for k, _, _, _ in columns), IDEAL["downstream"], "", "",
             ""]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
             "| " + " | ".join(ideal) + " |"]
    for row in rows:
        if row["status"] != "done":
            why = row["status"] if row["status"] == "not run" else \
                f"{row['status']}: {row.get('error', '')}"
            lines.append(f"| {row['method']} | {why} |" + " |" * (len(headers) - 2))
            continue
        cells = [row["method"], *(_fmt(row[k], d) for k, _, _, d in columns),
                 _fmt(row["downstream"]), _fmt(row["fit_seconds"], 0), _fmt(row["peak_mib"], 0),
                 _fmt(row["parameters_changed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, config: Any) -> dict[str, Any]:
    """results.json, results.md and plots/tradeoff.png from the method folders."""
    stored = json.loads((out / CONFIG_NAME).read_text())
    known = method_names()  # built-ins in their table order, then the run's own order
    methods = sorted(stored.get("methods", config.methods),
                     key=lambda m: (known.index(m) if m in known else len(known)))
    rows = collect(out, methods)
    model = config.model
    plot = tradeoff([r for r in rows if r["status"] == "done"], out / "plots" / "tradeoff.png",
                    title=f"{model}: bias removed vs knowledge kept")
    results = {"kind": "bench", "model": model, "config": stored, "rows": rows,
               "versions": library_versions()}
    atomic_write_json(out / "results.json", results)
    bias_types = ", ".join(stored.get("bias_types") or ["all"])
    lines = [f"# fairstamp bench: `{model}`", "",
             f"Data `{stored['data']}` ({bias_types}), seed {stored['seed']}, one run: every "
             "method fitted on the same edit-side items and evaluated by the same BiaScope "
             "suite; the held-out targets are never edited.", "",
             markdown_table(rows), "",
             "SS/PS/CrowS/RS/DS/LMS/ICAT in %, BBQ s_AMB = BBQ's bias score in ambiguous "
             "contexts (−100 … 100), WinoBias gap = pro − anti accuracy (points), BOLD gender "
             "gap = largest difference of mean VADER sentiment between BOLD's gender groups "
             "(docs/biascope.md, Transfer suite), PPL = WikiText-2 perplexity, known kept = "
             "`known_1000` top-1 predictions unchanged vs the original (%), downstream = mean "
             "zero-shot accuracy (%), fit s = seconds to fit, peak MiB = peak resident memory "
             "of loading + fitting, params changed = parameters changed or added. Per-method "
             "details: `methods/<name>/result.json`; every number: `methods/<name>/metrics.json`.",
             ""]
    if plot is not None:
        lines += ["![trade-off](plots/tradeoff.png)", ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    return results


def print_results(results: Mapping[str, Any]) -> None:
    from rich.table import Table  # rich.style draws from `random` when imported

    table = Table(title=f"fairstamp bench: {results['model']}")
    headers = ["method", "SS edited", "PS edited", "SS held-out", "RS unseen", "LMS", "PPL",
               "known kept", "fit s", "params"]
    keys = ["ss_edited", "ps_edited", "ss_held_out", "rs_unseen", "lms", "perplexity",
            "known_kept", "fit_seconds", "parameters_changed"]
    if any(row.get("ss_held_out_cv") is not None for row in results["rows"]):
        headers.insert(4, "SS held-out (CV)")
        keys.insert(3, "ss_held_out_cv")
    for header in headers:
        table.add_column(header, justify="left" if header == "method" else "right")
    for row in results["rows"]:
        if row["status"] != "done":
            table.add_row(row["method"], f"[red]{row['status']}[/red]",
                          *([""] * (len(headers) - 2)))
            continue
        table.add_row(row["method"], *(_fmt(row[k], 2 if k == "perplexity" else
                                            0 if k == "fit_seconds" else 1) for k in keys))
    console().print(table)
