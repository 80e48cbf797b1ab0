"""`fairstamp compare`: what changed between two evaluation runs (e.g. before and after a stamp)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(metric, column, value in a, value in b) for every metric both runs have."""
    from fairstamp.reporting.report import METRIC_ROWS, flat

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


def compare(
    first: Annotated[Path, typer.Argument(help="Run folder A (e.g. before).")],
    second: Annotated[Path, typer.Argument(help="Run folder B (e.g. after).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the "  # noqa: UP045
                                                "comparison plot and table.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --out folder.")] = False,
) -> None:
    """Print (and with --out, plot and write) every metric of two runs side by side with the
    difference B − A."""
    from rich.table import Table

    from fairstamp.evaluation.run_folder import read_metrics
    from fairstamp.reporting.text import console

    a, b = read_metrics(first), read_metrics(second)
    rows = compare_rows(a, b)
    if not rows:
        from fairstamp.errors import FairstampError

        raise FairstampError(f"{first} and {second} have no metric in common")
    name_a, name_b = first.name or str(first), second.name or str(second)
    table = Table(title=f"{name_a} → {name_b}")
    for col in ("metric", "column", name_a, name_b, "Δ (B − A)"):
        table.add_column(col, justify="left" if col in ("metric", "column") else "right")
    for label, col, va, vb in rows:
        table.add_row(label, col, f"{va:.2f}", f"{vb:.2f}", f"{vb - va:+.2f}")
    console().print(table)
    if out is not None:
        _write(out, a, b, rows, name_a, name_b, overwrite)
        typer.echo(f"comparison: {out / 'compare.md'}", err=True)


def _write(out: Path, a: dict, b: dict, rows: list, name_a: str, name_b: str,
           overwrite: bool) -> None:
    from fairstamp.reporting import plots as P
    from fairstamp.reporting.report import flat
    from fairstamp.utils.io import atomic_write_json, atomic_write_text, staging_dir

    with staging_dir(out, overwrite=overwrite) as stage:
        lines = [f"# {name_a} → {name_b}", "", f"| metric | column | {name_a} | {name_b} | Δ |",
                 "|---|---|---:|---:|---:|"]
        lines += [f"| {m} | {c} | {va:.2f} | {vb:.2f} | {vb - va:+.2f} |"
                  for m, c, va, vb in rows]
        plots = []
        sa = a["metrics"].get("stereoset", {}).get("ss")
        sb = b["metrics"].get("stereoset", {}).get("ss")
        if sa and sb:
            P.bars_with_ideal({name_a: flat(sa), name_b: flat(sb)}, stage / "ss_before_after.png",
                              title="Stereotype score", ylabel="SS (%)")
            plots.append("ss_before_after.png")
        lines += ["", *[f"![{p}]({p})" for p in plots], ""]
        atomic_write_text(stage / "compare.md", "\n".join(lines))
        atomic_write_json(stage / "compare.json", [
            {"metric": m, "column": c, "a": va, "b": vb, "delta": vb - va}
            for m, c, va, vb in rows])


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
