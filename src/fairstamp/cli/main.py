"""The `fairstamp` command: one Typer app, one error boundary, logging set up here and only here."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn, Optional

import typer

from fairstamp import __version__
from fairstamp.errors import FairstampError
from fairstamp.utils.distributed import launched_rank
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

#: exit statuses (docs/errors.md)
OK, INTERNAL, USAGE, INTERRUPTED = 0, 1, 2, 130

#: set by the root options for the error boundary in `main` (reset on every call)
_session: dict[str, object] = {}

_INTERRUPT_NOTES = {
    "bench": "methods that had finished are kept; the same command resumes the run",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fairstamp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an unexpected error (and debug logs).")] = False,
) -> None:
    _session["debug"] = debug
    _session["command"] = ctx.invoked_subcommand
    if debug:
        verbose = max(verbose, 2)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if level == logging.INFO and launched_rank() > 0:  # `accelerate launch`: the main one reports
        level = logging.WARNING
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
    """Entry point. Exit status: 0 success; 2 a usage or data error (one `error: ...` line); 130
    interrupted (Ctrl-C; nothing written); 1 an unexpected internal error (one line, the
    traceback with --debug)."""
    _session.clear()
    try:
        _register()
        # Typer turns Ctrl-C into exit status 130 and returns it (standalone_mode=False).
        status = app(args=argv, standalone_mode=False)
        if status == INTERRUPTED:
            return _interrupted()
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    except (FairstampError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except typer.TyperException as exc:  # typer's own click: usage errors, bad values
        return _usage_error(exc)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            return _usage_error(exc)
        return _internal_error(exc)
    return OK


def run() -> NoReturn:
    """The `fairstamp` command: `main()`'s status as the process's exit status (a process of
    several under `accelerate launch` leaves its process group first:
    `fairstamp.utils.distributed.exit_process`)."""
    from fairstamp.utils.distributed import exit_process

    exit_process(main())


def _command() -> str:
    command = _session.get("command")
    return f"fairstamp {command}" if command else "fairstamp"


def _interrupted() -> int:
    note = _INTERRUPT_NOTES.get(str(_session.get("command")))
    what = note or "nothing was written"
    typer.echo(f"interrupted: {_command()} stopped before it finished; {what}", err=True)
    return INTERRUPTED


def _usage_error(exc: Exception) -> int:
    """Click's usage message (usage line, hint, `Error: ...`), never a traceback."""
    show = getattr(exc, "show", None)
    if callable(show):
        show()
    else:
        typer.echo(f"error: {exc}", err=True)
    code = getattr(exc, "exit_code", USAGE)
    return code if code in (OK, USAGE) else USAGE


def _internal_error(exc: Exception) -> int:
    if _session.get("debug"):
        import traceback

        traceback.print_exception(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"internal error in {_command()}: {type(exc).__name__}"
               f"{': ' + first if first else ''} (a bug in fairstamp; run again with "
               f"`fairstamp --debug ...` for the traceback)", err=True)
    return INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
