"""How the CLI reports failures: one ``Error:`` line on stderr and exit code 1.

User mistakes (a bad URL, an unreachable database, an unknown job id, invalid JSON, a
missing queue) become :class:`CLIError` or the library's own errors (``StorageError``,
``MissingDriver``), whose messages already say what to do. Anything else is a bug: it is
reported in one line too, with a pointer to ``--debug`` (or ``SDJ_DEBUG=1``), which
shows every failure's traceback instead.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from ..errors import StorageError
from ..storage.dialects import MissingDriver

__all__ = ["CLIError", "FriendlyErrors", "fail"]

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class CLIError(Exception):
    """A user-facing failure; its message is printed as is."""


def fail(message: str) -> typer.Exit:
    """Print ``Error: message`` on stderr; returns the ``Exit(1)`` for the caller to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def debugging(ctx: Any) -> bool:
    """Whether ``--debug`` (or ``SDJ_DEBUG`` set to anything but 0) asks for tracebacks."""
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("SDJ_DEBUG", "0") not in ("", "0")


def _command_flow(exc: BaseException) -> bool:
    """Whether ``exc`` is Click's or Typer's own (an exit, a usage error): they print it."""
    return type(exc).__module__.split(".")[0] in ("click", "typer")


class FriendlyErrors(TyperGroup):
    """The root group: turns failures of any subcommand into one-line errors."""

    # ``Any``: the context class comes from Click or from Typer's bundled copy of it.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if debugging(ctx):
                raise
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(INTERRUPTED) from None
        except (CLIError, MissingDriver, StorageError) as exc:
            if debugging(ctx):
                raise
            raise fail(str(exc)) from None
        except Exception as exc:
            if _command_flow(exc) or debugging(ctx):
                raise
            raise fail(
                f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            ) from None
