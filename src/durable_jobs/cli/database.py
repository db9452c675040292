"""Opening a command's database and finding a job in it, with errors a person can act on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..job import Job
from ..storage import SQLStorage
from ..storage.dialects import database_file
from .errors import CLIError

__all__ = ["DEFAULT_URL", "DatabaseUrl", "JsonFlag", "get_job", "open_storage"]

DEFAULT_URL = "sqlite:///jobs.db"

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="SDJ_DATABASE_URL",
        help="sqlite:///path.db or postgresql://user@host/db.",
        show_envvar=True,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@contextlib.contextmanager
def open_storage(url: str, *, create: bool = False) -> Iterator[SQLStorage]:
    """A connected storage for ``url``, closed on exit.

    ``create`` migrates the schema (commands that write jobs, like ``jobs.Queue(url)``);
    otherwise the database must already hold it, so a mistyped URL is reported rather
    than silently given an empty new database. A database that cannot be reached raises
    the storage's ``StorageError``, whose message says what to check.
    """
    if not create:
        _check_database_file_exists(url)
    try:
        storage = SQLStorage(url)
    except ValueError as exc:  # SQLStorage's message names the URL and what is accepted
        raise CLIError(str(exc)) from None
    try:
        if create:
            storage.migrate()
        elif storage.schema_version() == 0:
            raise CLIError(f"{storage.url} has no sdj tables; run `sdj migrate` first")
        yield storage
    finally:
        storage.close()


def get_job(storage: SQLStorage, job_id: str) -> Job:
    """The job with ``job_id``; raises ``CLIError`` when there is none."""
    job = storage.get_job(job_id)
    if job is None:
        raise CLIError(f"no job with id {job_id!r}")
    return job


def _check_database_file_exists(url: str) -> None:
    name = database_file(url)  # None: a server, or a bad URL that SQLStorage reports
    if name is None:
        return
    path = Path(name)
    if not path.parent.is_dir():
        raise CLIError(
            f"the directory of database file {path} does not exist; create it, or pass"
            " another --database-url"
        )
    if not path.exists():
        raise CLIError(
            f"database file {name} does not exist; run `sdj migrate` to create it "
            "or pass --database-url"
        )
