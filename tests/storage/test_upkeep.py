"""The upkeep check a worker runs at start: on PostgreSQL, a warning when autovacuum
skips the jobs table (claims then slow down with every job run); nothing elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import durable_jobs as jobs
from durable_jobs.storage.postgres import autovacuum_warning
from tests.storage.helpers import sql


@pytest.mark.parametrize(
    ("server", "table", "where"),
    [
        ("off", None, "on this PostgreSQL server"),
        ("off", "true", "on this PostgreSQL server"),
        ("on", "false", "for table sdj_jobs"),
        ("on", "OFF", "for table sdj_jobs"),
        ("on", "0", "for table sdj_jobs"),
    ],
)
def test_autovacuum_off_for_the_jobs_table_is_named(
    server: str, table: str | None, where: str
) -> None:
    warning = autovacuum_warning(server, table)
    assert warning is not None
    assert warning.startswith(f"autovacuum is off {where}:")
    assert "VACUUM sdj_jobs" in warning


@pytest.mark.parametrize("table", [None, "true", "on", "1"])
def test_autovacuum_on_for_the_jobs_table_gives_no_warning(table: str | None) -> None:
    assert autovacuum_warning("on", table) is None


def _server_autovacuum(storage: jobs.SQLStorage) -> str:
    with storage.engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW autovacuum").scalar())


@pytest.fixture
def vacuum_off(storage: jobs.SQLStorage) -> Iterator[None]:
    """The jobs table's own autovacuum switched off (PostgreSQL), reset afterwards."""
    sql(storage, "ALTER TABLE sdj_jobs SET (autovacuum_enabled = false)")
    try:
        yield
    finally:
        sql(storage, "ALTER TABLE sdj_jobs RESET (autovacuum_enabled)")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgres_reads_the_servers_setting(storage: jobs.SQLStorage) -> None:
    assert storage.upkeep_warning() == autovacuum_warning(_server_autovacuum(storage), None)


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.usefixtures("vacuum_off")
def test_postgres_reads_the_tables_own_setting(storage: jobs.SQLStorage) -> None:
    warning = storage.upkeep_warning()
    assert warning == autovacuum_warning(_server_autovacuum(storage), "false")
    assert warning is not None


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.usefixtures("vacuum_off")
def test_a_worker_starting_on_postgres_logs_the_warning_once_per_storage(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="durable_jobs"):
        with queue.worker():
            pass
        with queue.worker():  # the same storage: told already
            pass
    warnings = [r.getMessage() for r in caplog.records if "autovacuum is off" in r.getMessage()]
    assert len(warnings) == 1
    assert "VACUUM sdj_jobs regularly" in warnings[0]


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_other_backends_need_no_upkeep(
    queue: jobs.Queue, storage: jobs.SQLStorage, caplog: pytest.LogCaptureFixture
) -> None:
    assert storage.upkeep_warning() is None
    with caplog.at_level(logging.WARNING, logger="durable_jobs"), queue.worker():
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "autovacuum" in m or "upkeep" in m]
