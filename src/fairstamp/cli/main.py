"""The `fairstamp` command: one Typer app, one error boundary, logging set up here and only here."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from fairstamp import __version__
from fairstamp.errors import FairstampError
from fairstamp.utils.logs import setup_logging

app = typer.Typer(
    name="fairstamp",
    help="Find social biases stored in a causal language model and remove them one by one "
    "(FAST fairness stamps, BiaScope benchmark).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

log = logging.getLogger("fairstamp")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fairstamp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    setup_logging(level, show_library_progress=verbose > 0)


def _register() -> None:
    from fairstamp.cli import (
        bench,
        compare,
        debias,
        demo,
        evaluate,
        generate,
        models,
        score,
        trace,
    )

    for module in (demo, debias, bench, evaluate, generate, trace, compare, models, score):
        module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors become `error: ...` on stderr and exit status 2."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except FairstampError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
