"""A failing database raises the library's errors: they name the database, say what to
do, and keep the driver's error as ``__cause__``, the same on every backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from tests.conftest import ADMIN_URL, MYSQL_URL

# A port nothing listens on, for each server backend.
REFUSED = {
    "postgresql": (
        sa.make_url(ADMIN_URL).set(port=1, database="test").render_as_string(False),
        psycopg.OperationalError,
    ),
    "mysql": (
        sa.make_url(MYSQL_URL).set(port=1, database="test").render_as_string(False),
        pymysql.OperationalError,
    ),
}


def _raised(url: str) -> jobs.StorageError:
    storage = jobs.SQLStorage(url)
    try:
        with pytest.raises(jobs.StorageError) as caught:
            storage.get_job("some-id")
    finally:
        storage.close()
    return caught.value


# Backend-specific: SQLite files in states only a file can be in.
def test_a_missing_directory_names_the_path_and_what_to_check(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "jobs.db"
    error = _raised(f"sqlite:///{path}")
    assert isinstance(error, jobs.DatabaseUnavailable)
    assert str(path) in str(error)
    assert "directory exists" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert not path.parent.exists()


def test_a_file_that_is_not_a_database_says_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 200)
    error = _raised(f"sqlite:///{path}")
    assert isinstance(error, jobs.NotADatabase)
    assert str(path) in str(error)
    assert isinstance(error.__cause__, sqlite3.DatabaseError)
    assert path.read_text().startswith("not a database")  # left as it was


def test_reading_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    error = _raised(f"sqlite:///{tmp_path / 'new.db'}")
    assert isinstance(error, jobs.SchemaNotReady)
    assert "sdj migrate" in str(error)
    assert "schema version 0" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)


# Backend-specific: a refused port on each server backend.
@pytest.mark.parametrize("backend", sorted(REFUSED))
def test_a_refused_server_is_unavailable_and_transient(backend: str) -> None:
    url, cause = REFUSED[backend]
    error = _raised(url)
    assert isinstance(error, jobs.DatabaseUnavailable)
    assert ":1/test" in str(error)
    assert "server is running" in str(error)
    assert error.transient
    assert isinstance(error.__cause__, cause)


def test_errors_hide_the_password(tmp_path: Path) -> None:
    url = sa.make_url(REFUSED["postgresql"][0]).set(password="s3cret")
    error = _raised(url.render_as_string(hide_password=False))
    assert "s3cret" not in str(error)
    assert "***" in error.database


def test_a_value_the_database_refuses_is_a_permanent_storage_error(
    storage: jobs.SQLStorage,
) -> None:
    storage.enqueue(jobs.Job(id="twice", type="t"))
    with pytest.raises(jobs.StorageError) as caught:
        storage.enqueue(jobs.Job(id="twice", type="t"))
    assert not caught.value.transient
    assert not isinstance(caught.value, jobs.DatabaseUnavailable)
    assert caught.value.database == storage.url
