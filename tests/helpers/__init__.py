"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

import durable_jobs as jobs
from tests.conftest import ADMIN_URL, _admin_engine, _mysql_admin_engine, mysql_database_url

T = TypeVar("T")


# What migration 6 (workflows that wait) added to sdj_jobs: tests that simulate an older
# schema drop them (indexes first: SQLite cannot drop an indexed column).
MIGRATION_6_INDEXES = ("sdj_jobs_waiting", "sdj_jobs_parent")
MIGRATION_6_TABLES = ("sdj_signals",)
MIGRATION_6_COLUMNS = ("parent_id", "progress", "wait_until", "waiting_for")
# What migration 7 (children and fan-out) added to sdj_jobs.
MIGRATION_7_COLUMNS = (
    "parent_group",
    "wait_group",
    "children_left",
    "children_need",
    "children_spare",
)


# What migration 9 (job control) added.
MIGRATION_9_COLUMNS = ("tags", "timeout_seconds", "concurrency_key", "rate_key", "paused_from")


def undo_migration_13(conn: sa.Connection) -> None:
    """Drop what migration 13 added: PostgreSQL's outcome trigger and its mark."""
    if conn.engine.dialect.name == "postgresql":
        conn.exec_driver_sql("DROP TRIGGER sdj_jobs_outcome ON sdj_jobs")
        conn.exec_driver_sql("DROP FUNCTION sdj_notify_outcome()")
        conn.exec_driver_sql("ALTER TABLE sdj_jobs DROP COLUMN outcome_wanted")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 13")


def undo_migration_12(conn: sa.Connection) -> None:
    """Drop what migrations 12 and 13 added: the labels and attempts tables and the
    triggers."""
    undo_migration_13(conn)
    name = conn.engine.dialect.name
    if name == "postgresql":
        conn.exec_driver_sql("DROP TRIGGER sdj_jobs_labels ON sdj_jobs")
        conn.exec_driver_sql("DROP FUNCTION sdj_label_job()")
    else:
        for trigger in ("sdj_jobs_tags", "sdj_jobs_meta"):
            conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
    for table in ("sdj_job_labels", "sdj_attempts"):
        conn.exec_driver_sql(f"DROP TABLE {table}")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 12")


def undo_migration_11(conn: sa.Connection) -> None:
    """Drop what migrations 11 and 12 added: the workers' release, operations' tables."""
    undo_migration_12(conn)
    conn.exec_driver_sql("ALTER TABLE sdj_workers DROP COLUMN version")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 11")


def undo_migration_10(conn: sa.Connection) -> None:
    """Drop what migrations 10 and 11 added: the limits' table and the running index."""
    undo_migration_11(conn)
    on = " ON sdj_jobs" if conn.engine.dialect.name == "mysql" else ""
    conn.exec_driver_sql("DROP TABLE sdj_limits")
    conn.exec_driver_sql(f"DROP INDEX sdj_jobs_type_running{on}")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 10")


def undo_migration_9(conn: sa.Connection) -> None:
    """Drop what migrations 9 and 10 added: job control's columns and tables."""
    undo_migration_10(conn)
    conn.exec_driver_sql("DROP TABLE sdj_queue_pauses")
    for column in MIGRATION_9_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 9")


def undo_migration_8(conn: sa.Connection) -> None:
    """Drop what migrations 8 and 9 added: the wake counters, job control."""
    undo_migration_9(conn)
    conn.exec_driver_sql("DROP TABLE sdj_wakes")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 8")


def undo_migration_7(conn: sa.Connection) -> None:
    """Drop what migrations 7 and 8 added, as a database migrated to version 6 lacks it."""
    undo_migration_8(conn)
    for column in MIGRATION_7_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 7")


def undo_migration_6(conn: sa.Connection) -> None:
    """Drop what migrations 6 and 7 added, as a database migrated to version 5 lacks it."""
    undo_migration_7(conn)
    on = " ON sdj_jobs" if conn.engine.dialect.name == "mysql" else ""
    for table in MIGRATION_6_TABLES:
        conn.exec_driver_sql(f"DROP TABLE {table}")
    for index in MIGRATION_6_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX {index}{on}")
    for column in MIGRATION_6_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
    conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 6")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.01) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database that nobody has migrated; a server's one is dropped after.

    A SQLite URL names a file in ``tmp_path`` that does not exist yet.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if backend == "mysql":
        mysql = _mysql_admin_engine()
        name = f"sdj_fresh_{uuid.uuid4().hex[:10]}"
        with mysql.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield mysql_database_url(name)
        finally:
            with mysql.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            mysql.dispose()
        return
    admin = _admin_engine()
    name = f"sdj_fresh_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_to_end(queue: jobs.Queue, job_id: str) -> jobs.Job:
    """Run a worker of ``queue`` (polling fast) until ``job_id`` completes or fails."""
    with queue.worker(poll_interval=0.05, lock_timeout=5):
        job = wait_for(
            lambda: (j := queue.get_job(job_id)) and j.status in ("completed", "failed") and j
        )
    assert isinstance(job, jobs.Job)
    return job
