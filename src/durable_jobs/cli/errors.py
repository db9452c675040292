"""How the CLI reports failures: one line on stderr and exit code 1, never a traceback.

User mistakes (a bad URL, an unreachable database, an unknown job id, invalid JSON, a
missing queue) become :class:`CLIError` or database errors, which the root command group
turns into ``Error: ...``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import sqlalchemy as sa
import typer
from typer.core import TyperGroup

from ..storage.dialects import MissingDriver

__all__ = ["CLIError", "FriendlyErrors", "describe_database_error", "fail"]

# Connection failures surface wrapped by SQLAlchemy (pool connect) or raw from the driver
# (storage runs statements on driver cursors). psycopg is an optional extra, imported only
# by a PostgreSQL storage: its errors are recognised by ``is_database_error``.
DATABASE_ERRORS = (sa.exc.OperationalError, sqlite3.OperationalError)


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection or operational failure of the database."""
    if isinstance(exc, DATABASE_ERRORS):
        return True
    psycopg = sys.modules.get("psycopg")  # not loaded: none of its errors was raised
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


class CLIError(Exception):
    """A user-facing failure; its message is printed as is."""


def fail(message: str) -> typer.Exit:
    """Print ``Error: message`` on stderr; returns the ``Exit(1)`` for the caller to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def describe_database_error(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's SQL dump and links."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0].strip() if lines else type(original).__name__


class FriendlyErrors(TyperGroup):
    """The root group: turns expected failures of any subcommand into one-line errors."""

    # ``Any``: the context class comes from Click or from Typer's bundled copy of it.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (CLIError, MissingDriver) as exc:
            raise fail(str(exc)) from None
        except Exception as exc:
            if not is_database_error(exc):
                raise
            raise fail(f"database error: {describe_database_error(exc)}") from None
