"""The library's errors for a failing database, in place of the driver's.

Storage calls raise ``StorageError`` subclasses whose message names the database
(password hidden) and says what to do, the same on every backend; the driver's error
is the ``__cause__``. Which driver errors mean what is each dialect's to say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..errors import DatabaseUnavailable, NotADatabase, SchemaNotReady, StorageError
from .transient import is_transient

if TYPE_CHECKING:
    from .dialects import Dialect

__all__ = ["first_line", "storage_error"]


def first_line(error: BaseException) -> str:
    """The driver's own first line of ``error``, without SQLAlchemy's SQL dump and links."""
    original = error.orig if isinstance(error, sa.exc.DBAPIError) else None
    lines = str(original or error).strip().splitlines()
    return lines[0].strip() if lines else type(original or error).__name__


def storage_error(
    error: BaseException,
    dialect: Dialect,
    database: str,
    schema: Callable[[], SchemaNotReady | None],
) -> StorageError:
    """The ``StorageError`` to raise (from ``error``) for a failed call on ``database``.

    ``schema`` tells, when the driver says a table is missing, whether the database is
    not migrated (it reads the schema version, so it is called only then).
    """
    driver = error.orig if isinstance(error, sa.exc.DBAPIError) and error.orig else error
    said = first_line(error)
    transient = is_transient(error)
    if dialect.missing_table(driver) and (missing := schema()) is not None:
        return missing
    if dialect.not_a_database(driver):
        return NotADatabase(
            f"{database} is not a usable {dialect.title} database ({said}). "
            f"{dialect.not_a_database_hint}",
            database=database,
        )
    if dialect.unavailable(driver):
        return DatabaseUnavailable(
            f"cannot {dialect.unavailable_verb} the database {database}: {said}. "
            f"{dialect.unavailable_hint}",
            database=database,
            transient=transient,
        )
    return StorageError(
        f"database error on {database}: {said}", database=database, transient=transient
    )
