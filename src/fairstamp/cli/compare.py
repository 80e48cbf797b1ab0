"""`fairstamp compare`: what changed between two evaluation runs (e.g. before and after a stamp)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli import validate as V
from fairstamp.errors import FairstampError
from fairstamp.evaluation.run_folder import read_metrics
from fairstamp.reporting.compare import compare_rows, write_compare_folder
from fairstamp.reporting.run_folder import run_folder
from fairstamp.reporting.text import console


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
    for path in (first, second):
        V.check_input_folder(path, "run folder")
    with V.claimed_output(out, overwrite=overwrite):
        _compare(first, second, out, overwrite)


def _compare(first: Path, second: Path, out: Path | None, overwrite: bool) -> None:
    from rich.table import Table  # on use: importing rich draws from `random` (reporting.text)

    a, b = read_metrics(first), read_metrics(second)
    rows = compare_rows(a, b)
    if not rows:
        raise FairstampError(f"{first} and {second} have no metric in common")
    name_a, name_b = first.name or str(first), second.name or str(second)
    table = Table(title=f"{name_a} → {name_b}")
    for col in ("metric", "column", name_a, name_b, "Δ (B − A)"):
        table.add_column(col, justify="left" if col in ("metric", "column") else "right")
    for label, col, va, vb in rows:
        table.add_row(label, col, f"{va:.2f}", f"{vb:.2f}", f"{vb - va:+.2f}")
    console().print(table)
    if out is not None:
        with run_folder(out, overwrite=overwrite) as folder:
            write_compare_folder(folder, a, b, rows, name_a, name_b)
        typer.echo(f"comparison: {out / 'compare.md'}", err=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
