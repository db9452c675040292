"""With a fake clock, no statement reads the database's clock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.clock import SYSTEM_CLOCK, Clock
from durable_jobs.storage.clocked import DATABASE_CLOCK, Rewriter
from durable_jobs.storage.dialects import Dialect, dialect_for
from durable_jobs.testing import FakeClock, drain

# Anything that reads a database's clock, broader than what ``Rewriter`` replaces: a
# statement that starts reading the clock in a new way fails here.
READS_CLOCK = re.compile(
    r"'now'|\b(?:now|clock_timestamp|statement_timestamp|transaction_timestamp|timeofday"
    r"|unixepoch|sysdate|utc_timestamp|utc_date|utc_time|curdate|curtime|unix_timestamp"
    r"|current_timestamp|current_date|current_time|localtimestamp|localtime)\b",
    re.IGNORECASE,
)
# Parameter names and column aliases that merely contain the word.
_NAMES = re.compile(r":now\b|%\(now\)s|\bAS now\b|\w+_now\b|\bnow\s*=", re.IGNORECASE)


def _statements(dialect: type[Dialect]) -> Iterator[tuple[str, str]]:
    for group in ("sql", "admin_sql", "limits_sql", "explain_sql"):
        for name, sql in getattr(dialect, group, {}).items():
            yield f"{group}.{name}", sql


def _reads_clock(sql: str) -> bool:
    return bool(READS_CLOCK.search(_NAMES.sub("", sql)))


@pytest.mark.parametrize("name", sorted(DATABASE_CLOCK))
def test_no_rewritten_statement_reads_the_database_clock(name: str) -> None:
    dialect = dialect_for(name)
    rewrite = Rewriter(name)
    reading = [label for label, sql in _statements(dialect) if _reads_clock(sql)]
    assert reading, "the detector finds the clock reads of the system-clock statements"
    left = [label for label, sql in _statements(dialect) if _reads_clock(rewrite(sql) or sql)]
    assert left == []


@pytest.mark.parametrize("name", sorted(DATABASE_CLOCK))
def test_the_statement_run_on_a_callers_connection_reads_no_clock(name: str) -> None:
    # enqueue(connection=<SQLAlchemy Connection>) runs it through SQLAlchemy, unrewritten.
    assert not _reads_clock(dialect_for(name).sql["insert_job"])


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(datetime(2026, 3, 28, 12))  # naive: UTC
    assert clock.now() == datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert clock.advance(hours=1, minutes=30) == datetime(2026, 3, 28, 13, 30, tzinfo=UTC)
    assert clock.advance(timedelta(days=1)).day == 29
    assert clock.advance(60).minute == 31
    clock.set(datetime(2020, 1, 1, tzinfo=UTC))
    assert clock.now().year == 2020
    with pytest.raises(ValueError, match="forward"):
        clock.advance(seconds=-1)
    with pytest.raises(TypeError):
        clock.advance()
    assert isinstance(clock, Clock)


def test_the_system_clock_wraps_nothing(tmp_path: Path) -> None:
    storage = jobs.SQLStorage(f"sqlite:///{tmp_path / 'jobs.db'}")
    queue = jobs.Queue(storage)
    assert queue.clock is SYSTEM_CLOCK and storage.clock is SYSTEM_CLOCK
    storage.migrate()
    with storage._cursor() as cur:
        assert type(cur).__module__ == "sqlite3"
    storage.close()


def test_a_storage_without_clocks_is_refused() -> None:
    class Bare:
        pass

    with pytest.raises(TypeError):
        jobs.Queue(Bare(), clock=FakeClock())  # type: ignore[arg-type]


@pytest.mark.parametrize("years", [-20, 20])
def test_locks_follow_a_clock_years_away(db_url: str, years: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365 * years)
    clock = FakeClock(start)
    storage = jobs.SQLStorage(db_url)
    storage.migrate()  # its connections are kept: they must take up the clock
    queue = jobs.Queue(storage, clock=clock)
    queue.register("work", lambda: None, backoff=jobs.constant(1))
    job_id = queue.enqueue("work")
    [claimed] = storage.claim("default", "w1", 1, lock_timeout=60)
    assert claimed.lock_expires_at == start + timedelta(seconds=60)
    clock.advance(seconds=50)
    storage.heartbeat_worker("w1", host="h", pid=1, queues=["default"], types=[], lock_timeout=60)
    job = queue.get_job(job_id)
    assert job is not None and job.lock_expires_at == start + timedelta(seconds=110)
    assert [w.id for w in storage.live_workers(timedelta(seconds=5))] == ["w1"]
    clock.advance(seconds=59)
    assert storage.release_expired_locks() == 0
    clock.advance(seconds=2)
    assert storage.release_expired_locks() == 1
    clock.advance(seconds=1)
    assert drain(queue).completed == 1
    storage.close()


def test_sqlite_runs_no_statement_that_reads_its_clock(tmp_path: Path) -> None:
    """Every statement SQLite runs in a drain of every feature, traced by the driver."""
    storage = jobs.SQLStorage(f"sqlite:///{tmp_path / 'jobs.db'}")
    executed: list[str] = []

    @sa.event.listens_for(storage.engine, "connect")
    def trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(executed.append)

    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    queue = jobs.Queue(storage, clock=clock)
    storage.migrate()
    _every_feature(queue, clock)
    assert len(executed) > 100
    assert [sql for sql in executed if _reads_clock(sql)] == []
    storage.close()


def _every_feature(queue: jobs.Queue, clock: FakeClock) -> None:
    queue.register("limited", lambda: None, rate_limit="1/s", concurrency=1)
    queue.register("fails", _fail, retries=1)
    queue.register("child", lambda n: n)

    @queue.job()
    def workflow() -> None:
        jobs.sleep(timedelta(hours=1))
        jobs.fan_out([jobs.sub("child", n) for n in range(2)])
        jobs.wait_for_signal("go", timeout=timedelta(minutes=5))

    queue.schedule("child", jobs.every(minutes=30), args=1)
    for _ in range(3):
        queue.enqueue("limited")
    queue.enqueue("fails")
    flow = queue.enqueue(workflow)
    queue.enqueue("child", 1, delay=60)
    paused = queue.enqueue("child", 2)
    queue.pause(paused)
    queue.resume(paused)
    queue.storage.claim("default", "gone", 1)
    for _ in range(6):
        drain(queue)
        clock.advance(minutes=20)
    queue.signal(flow, "go")
    drain(queue)
    queue.storage.admin().queue_stats()
    queue.cancel(queue.enqueue("child", 3))


def _fail() -> None:
    raise RuntimeError("no")
