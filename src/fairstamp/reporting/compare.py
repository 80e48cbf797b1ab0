"""What changed between two evaluation runs (`fairstamp compare`): the rows both runs have, and
the comparison folder (compare.md, compare.json, the SS before/after plot)."""

from __future__ import annotations

from typing import Any

from fairstamp.reporting import plots as P
from fairstamp.reporting.report import METRIC_ROWS, flat
from fairstamp.reporting.run_folder import RunFolder

#: (metric, column, value in A, value in B)
Row = tuple[str, str, float, float]


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """(metric, column, value in a, value in b) for every metric both runs have."""
    rows = []
    for section, key, label, _ in METRIC_ROWS:
        ba = a["metrics"].get(section, {}).get(key)
        bb = b["metrics"].get(section, {}).get(key)
        if not (ba and bb):
            continue
        fa, fb = flat(ba), flat(bb)
        rows += [(label, col, fa[col]["value"], fb[col]["value"]) for col in fa if col in fb]
    ga, gb = a["metrics"].get("general") or {}, b["metrics"].get("general") or {}
    if "perplexity" in ga and "perplexity" in gb:
        rows.append(("WikiText-2 perplexity", "overall", ga["perplexity"]["value"],
                     gb["perplexity"]["value"]))
    for key in ("accuracy", "kept"):
        if key in ga.get("known_1000", {}) and key in gb.get("known_1000", {}):
            rows.append((f"known_1000 {key}", "overall", ga["known_1000"][key]["value"],
                         gb["known_1000"][key]["value"]))
    for task, result in (ga.get("downstream") or {}).items():
        if task in (gb.get("downstream") or {}):
            rows.append((f"{task} accuracy", "overall", result["acc"]["value"],
                         gb["downstream"][task]["acc"]["value"]))
    return rows


def write_compare_folder(folder: RunFolder, a: dict[str, Any], b: dict[str, Any],
                         rows: list[Row], name_a: str, name_b: str) -> None:
    """compare.md (the table, the plot), compare.json (the rows with their Δ) and, when both
    runs have SS, ss_before_after.png."""
    lines = [f"# {name_a} → {name_b}", "", f"| metric | column | {name_a} | {name_b} | Δ |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {m} | {c} | {va:.2f} | {vb:.2f} | {vb - va:+.2f} |" for m, c, va, vb in rows]
    plots = []
    sa = a["metrics"].get("stereoset", {}).get("ss")
    sb = b["metrics"].get("stereoset", {}).get("ss")
    if sa and sb:
        P.bars_with_ideal({name_a: flat(sa), name_b: flat(sb)},
                          folder.path / "ss_before_after.png",
                          title="Stereotype score", ylabel="SS (%)")
        plots.append("ss_before_after.png")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    folder.text("compare.md", "\n".join(lines))
    folder.json("compare.json", [{"metric": m, "column": c, "a": va, "b": vb, "delta": vb - va}
                                 for m, c, va, vb in rows])
