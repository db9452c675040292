"""The scheduler on real databases: one job per fire time, catch-up, listing, workers.

Most tests drive ``Scheduler.run_once`` with explicit times, so they never sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.scheduler import Scheduler
from durable_jobs.testing import FakeClock, drain
from tests.helpers import undo_migration_6, wait_for

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)  # a Tuesday, far from any real clock


def at(**offset: float) -> datetime:
    return T0 + timedelta(**offset)


def scheduled(queue: jobs.Queue, name: str = "tick") -> list[tuple[str, datetime]]:
    """(unique_key, run_at) of the jobs of type ``name``, by run time."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT unique_key, run_at FROM sdj_jobs WHERE type = :t ORDER BY run_at"),
            {"t": name},
        ).all()
    result = []
    for key, run_at in rows:
        when = storage.dialect.time_value(run_at)
        assert when is not None
        result.append((key, when))
    return result


def fire_times(queue: jobs.Queue, name: str = "tick") -> list[datetime]:
    return [when for _, when in scheduled(queue, name)]


def ticking_queue(
    storage: jobs.Storage,
    schedule: jobs.Schedule | None = None,
    args: object = None,
    **options: object,
) -> jobs.Queue:
    """A queue (as another process would have) with a "tick" handler and schedule."""
    q = jobs.Queue(storage)
    q.register("tick", lambda *_: None)
    q.schedule("tick", schedule or jobs.every(minutes=5), args, **options)
    return q


# -- exactly once --------------------------------------------------------------------------


def test_one_job_per_fire_time_however_many_schedulers_and_storages(db_url: str) -> None:
    storages = [jobs.SQLStorage(db_url) for _ in range(3)]
    try:
        queues = [ticking_queue(s, jobs.every(seconds=10)) for s in storages]
        schedulers = [Scheduler(q) for q in queues for _ in range(2)]
        for seconds, expected in ((3, 0), (10, 1), (10.5, 0), (20.1, 1)):
            assert sum(s.run_once(at(seconds=seconds)) for s in schedulers) == expected
        # Late but on time (within the grace): each fire time still gets its own run.
        assert sum(s.run_once(at(seconds=45)) for s in schedulers) == 2
        keys = scheduled(queues[0])
        assert [when for _, when in keys] == [at(seconds=s) for s in (10, 20, 30, 40)]
        assert [key for key, _ in keys] == [f"schedule:tick:{when.isoformat()}" for _, when in keys]
    finally:
        for s in storages:
            s.close()


def test_enqueue_unique_stores_one_job_per_key(storage: jobs.SQLStorage) -> None:
    first = jobs.Job(type="t")
    assert storage.enqueue_unique(first, "k1") is True
    assert storage.enqueue_unique(jobs.Job(type="t"), "k1") is False
    assert storage.enqueue_unique(jobs.Job(type="t"), "k2") is True
    storage.enqueue(jobs.Job(type="t"))  # jobs without a key never conflict
    storage.enqueue(jobs.Job(type="t"))
    assert storage.get_job(first.id) is not None
    assert len(storage.get_jobs_by_status("pending", 10)) == 4


def test_migration_2_upgrades_a_version_1_database(storage: jobs.SQLStorage) -> None:
    with storage.engine.begin() as conn:
        undo_migration_6(conn)
        for statement in (
            "DROP TABLE sdj_schedules",
            # MySQL names the index's table; the others do not take it.
            "DROP INDEX sdj_jobs_unique_key"
            + (" ON sdj_jobs" if storage.dialect.name == "mysql" else ""),
            "ALTER TABLE sdj_jobs DROP COLUMN unique_key",
            "ALTER TABLE sdj_jobs DROP COLUMN meta",
            "ALTER TABLE sdj_jobs DROP COLUMN fence",
            "ALTER TABLE sdj_jobs DROP COLUMN lock_expires_at",
            "ALTER TABLE sdj_jobs DROP COLUMN finished_at",
            "ALTER TABLE sdj_jobs DROP COLUMN finished_by",
            "ALTER TABLE sdj_jobs DROP COLUMN traceback",
            "DELETE FROM sdj_schema_version WHERE version >= 2",
        ):
            conn.exec_driver_sql(statement)
        # A job as version 1 stored it (today's enqueue writes columns added since).
        conn.execute(
            sa.text(
                "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
                " max_retries, run_at, created_at, updated_at) VALUES"
                " ('v1-job', 't', 'null', 'default', 0, 'pending', 0, 3, :now, :now, :now)"
            ),
            {"now": storage.dialect.time_param(datetime.now(UTC))},
        )
    job_id = "v1-job"
    assert storage.schema_version() == 1
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    assert storage.get_job(job_id) is not None
    assert storage.enqueue_unique(jobs.Job(type="t"), "k") is True
    assert storage.list_schedules() == []


# -- first start, catch-up, listing ------------------------------------------------------


def test_first_start_does_not_fire_retroactively(queue: jobs.Queue) -> None:
    queue.register("digest", lambda: None)
    queue.schedule("digest", jobs.daily(9, 0))
    queue.register("tick", lambda: None)
    queue.schedule("tick", jobs.every(minutes=5))
    scheduler = Scheduler(queue)
    assert scheduler.next_due(at()) == at()  # nothing known yet: load at once
    assert scheduler.run_once(at(minutes=4, seconds=59)) == 0
    assert scheduler.next_due(at(minutes=5)) == at(minutes=5)
    [digest, tick] = queue.storage.list_schedules()  # type: ignore[attr-defined]
    assert (digest.name, digest.last_fire_at, digest.next_fire_at) == (
        "digest",
        None,
        datetime(2031, 5, 7, 9, 0, tzinfo=UTC),  # not today's 09:00, which had passed
    )
    assert (tick.last_fire_at, tick.next_fire_at) == (None, at(minutes=5))
    assert fire_times(queue) == []


def test_downtime_yields_one_catch_up_run(queue: jobs.Queue) -> None:
    first = Scheduler(ticking_queue(queue.storage))
    assert first.run_once(at(minutes=1)) == 0
    assert first.run_once(at(minutes=5, seconds=0.2)) == 1
    # The fleet is down from 12:05 to 13:02: eleven fire times pass unhandled.
    restarted = Scheduler(ticking_queue(queue.storage))
    assert restarted.run_once(at(hours=1, minutes=2)) == 1
    assert restarted.run_once(at(hours=1, minutes=3)) == 0
    assert restarted.run_once(at(hours=1, minutes=5)) == 1
    assert fire_times(queue) == [at(minutes=5), at(hours=1), at(hours=1, minutes=5)]
    # A scheduler stalled for longer than the grace catches up the same way.
    assert first.run_once(at(hours=3, minutes=1)) == 1
    assert fire_times(queue)[-1] == at(hours=3)
    [state] = queue.storage.list_schedules()  # type: ignore[attr-defined]
    assert (state.last_fire_at, state.next_fire_at) == (at(hours=3), at(hours=3, minutes=5))


def test_catch_up_none_skips_missed_fire_times(queue: jobs.Queue) -> None:
    first = Scheduler(ticking_queue(queue.storage), catch_up="none")
    first.run_once(at(minutes=1))
    assert first.run_once(at(minutes=5)) == 1
    restarted = Scheduler(ticking_queue(queue.storage), catch_up="none")
    assert restarted.run_once(at(hours=1, minutes=2)) == 0  # 13:00 is two minutes stale
    [state] = queue.storage.list_schedules()  # type: ignore[attr-defined]
    assert (state.last_fire_at, state.next_fire_at) == (at(minutes=5), at(hours=1, minutes=5))
    assert restarted.run_once(at(hours=1, minutes=5)) == 1
    # A restart just after a fire time still runs it: it is within the grace.
    again = Scheduler(ticking_queue(queue.storage), catch_up="none")
    assert again.run_once(at(hours=1, minutes=10, seconds=20)) == 1
    assert fire_times(queue) == [at(minutes=5), at(hours=1, minutes=5), at(hours=1, minutes=10)]


def test_list_schedules_shows_spec_queue_and_fire_times(queue: jobs.Queue) -> None:
    q = ticking_queue(queue.storage, jobs.cron("*/15 * * * *"), queue="ops", priority=3)
    q.register("weekly_report", lambda: None, queue="reports")
    q.schedule("weekly_report", jobs.weekly("sun", 2, 0, tz="Europe/Paris"))
    scheduler = Scheduler(q)
    scheduler.run_once(at())
    scheduler.run_once(at(minutes=15))
    [tick, report] = sorted(queue.storage.list_schedules(), key=lambda s: s.name)  # type: ignore[attr-defined]
    assert (tick.name, tick.spec, tick.queue) == ("tick", "cron */15 * * * * UTC", "ops")
    assert (tick.last_fire_at, tick.next_fire_at) == (at(minutes=15), at(minutes=30))
    assert (report.spec, report.queue) == ("weekly sunday 02:00 Europe/Paris", "reports")
    assert report.next_fire_at == datetime(2031, 5, 11, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert report.updated_at is not None


def test_a_changed_spec_starts_afresh(queue: jobs.Queue) -> None:
    old = Scheduler(ticking_queue(queue.storage, jobs.every(minutes=5)))
    old.run_once(at())
    old.run_once(at(minutes=5))
    new = Scheduler(ticking_queue(queue.storage, jobs.every(minutes=7)))
    assert new.run_once(at(hours=2)) == 0  # no catch-up for fire times of the old spec
    [state] = queue.storage.list_schedules()  # type: ignore[attr-defined]
    assert (state.spec, state.last_fire_at) == ("every 420s", None)
    assert state.next_fire_at == jobs.every(minutes=7).next_after(at(hours=2))


def test_a_slow_scheduler_never_moves_the_record_back(storage: jobs.SQLStorage) -> None:
    storage.upsert_schedule("s", "every 60s", "default", at(minutes=2), at(minutes=3))
    storage.upsert_schedule("s", "every 60s", "default", at(minutes=1), at(minutes=2))
    storage.upsert_schedule("s", "every 60s", "default", None, at(minutes=4))  # a skip
    [state] = storage.list_schedules()
    assert (state.last_fire_at, state.next_fire_at) == (at(minutes=2), at(minutes=4))


# -- the jobs themselves ----------------------------------------------------------------


def test_scheduled_jobs_carry_args_and_options(queue: jobs.Queue) -> None:
    args = {"report": "daily"}
    q = ticking_queue(queue.storage, None, args, queue="ops", priority=7, retries=1, delay=30)
    scheduler = Scheduler(q)
    scheduler.run_once(at())
    scheduler.run_once(at(minutes=5))
    [job] = queue.storage.get_jobs_by_status("pending", 10)
    assert (job.type, job.queue, job.priority, job.max_retries) == ("tick", "ops", 7, 1)
    assert json.loads(job.args) == args
    assert job.run_at == at(minutes=5, seconds=30)  # the fire time plus the delay


def test_a_schedule_needs_a_handler_when_the_scheduler_starts(queue: jobs.Queue) -> None:
    queue.schedule("later", jobs.every(seconds=1))  # before its handler: allowed
    with pytest.raises(ValueError, match="no handler registered for scheduled job type"):
        Scheduler(queue)
    worker = queue.worker(scheduler=True)
    with pytest.raises(ValueError, match="later"):
        worker.start()
    assert not worker.running
    queue.register("later", lambda: None)
    Scheduler(queue)


def test_bad_scheduler_arguments(queue: jobs.Queue) -> None:
    with pytest.raises(ValueError, match="catch_up"):
        Scheduler(queue, catch_up="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        Scheduler(queue, grace=timedelta(seconds=-1))


def test_every_schedule_runs_through_a_scheduler_worker(queue: jobs.Queue) -> None:
    ran: list[datetime] = []
    queue.register("tick", lambda: ran.append(datetime.now(UTC)))
    queue.schedule("tick", jobs.every(seconds=0.5))
    with queue.worker(scheduler=True, poll_interval=1, lock_timeout=5):
        wait_for(lambda: len(ran) >= 3, timeout=10)
    times = fire_times(queue)
    assert times == [times[0] + timedelta(seconds=0.5 * n) for n in range(len(times))]
    # Woken by the scheduler itself, not the 1 s poll.
    assert all(t < when + timedelta(seconds=0.4) for t, when in zip(ran, times, strict=False))


def test_every_schedule_runs_each_fire_time_under_a_fake_clock(storage: jobs.SQLStorage) -> None:
    clock = FakeClock(at(seconds=0.2))
    queue = jobs.Queue(storage, clock=clock)
    ran: list[datetime] = []
    queue.register("tick", lambda: ran.append(clock.now()))
    queue.schedule("tick", jobs.every(seconds=0.5))
    drain(queue)  # the scheduler starts: nothing before now is owed
    for _ in range(6):
        clock.advance(seconds=0.25)
        drain(queue)
    assert fire_times(queue) == [at(seconds=0.5), at(seconds=1), at(seconds=1.5)]
    assert ran == [at(seconds=0.7), at(seconds=1.2), at(seconds=1.7)]  # at the first look


# -- real processes ------------------------------------------------------------------


@pytest.fixture
def processes(db_url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_three_scheduler_processes_fire_each_second_exactly_once(
    queue: jobs.Queue, db_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    env = {**os.environ, "SDJ_DATABASE_URL": db_url}
    for _ in range(3):
        command = [sys.executable, "-m", "tests.procs.sched_app"]
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    wait_for(lambda: len(storage.live_workers(timedelta(seconds=30))) == 3, timeout=30)
    all_up = datetime.now(UTC)
    time.sleep(4)
    stopping = datetime.now(UTC)
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in processes] == [0, 0, 0]
    rows = scheduled(queue)
    times = [when for _, when in rows]
    assert len(set(times)) == len(times), "a fire time got more than one job"
    assert len({key for key, _ in rows}) == len(rows)
    second = timedelta(seconds=1)
    assert times == [times[0] + n * second for n in range(len(times))], "a fire time was skipped"
    # Every fire time while all three ran is there.
    assert times[0] <= all_up + second and times[-1] >= stopping - second
    assert len(times) >= 4


# -- what is not a schedule, and schedules that fail ---------------------------------------


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (None, ""),
        ("0 * * * *", "jobs.cron('0 * * * *')"),
        (5, "jobs.every("),
        (timedelta(minutes=5), "jobs.every("),
    ],
    ids=repr,
)
def test_schedule_refuses_what_is_not_a_schedule(
    queue: jobs.Queue, value: object, hint: str
) -> None:
    queue.register("tick", lambda: None)
    expected = r"jobs\.every.*jobs\.daily.*jobs\.weekly.*jobs\.cron"
    with pytest.raises(TypeError, match=expected) as exc:
        queue.schedule("tick", value)  # type: ignore[arg-type]
    assert hint in str(exc.value)
    assert queue.schedules == {}
    assert Scheduler(queue).run_once(at()) == 0
    assert queue.storage.list_schedules() == []  # type: ignore[attr-defined]


class _Breakable(jobs.Schedule):
    """A custom schedule whose next_after raises while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True

    def next_after(self, dt: datetime) -> datetime:
        if self.broken:
            raise RuntimeError("this schedule has a bug")
        return jobs.every(minutes=5).next_after(dt)

    @property
    def spec(self) -> str:
        return "breakable"


def test_a_failing_schedule_does_not_stop_the_others(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _Breakable()
    queue.register("bad", lambda: None)
    queue.schedule("bad", bad)  # first in line
    queue.register("tick", lambda: None)
    queue.schedule("tick", jobs.every(minutes=5))
    scheduler = Scheduler(queue)
    with caplog.at_level("INFO", logger="durable_jobs"):
        assert scheduler.run_once(at(minutes=1)) == 0  # "bad" fails when first seen
        assert scheduler.run_once(at(minutes=1, seconds=1)) == 0
        # The failing schedule is retried at the next poll, not in a tight loop.
        assert scheduler.next_due(at(minutes=1, seconds=2)) == at(minutes=5)
        bad.broken = False
        assert scheduler.run_once(at(minutes=2)) == 0  # now tracked
        bad.broken = True
        assert scheduler.run_once(at(minutes=5)) == 1  # "bad" fails to fire; "tick" fires
        assert fire_times(queue, "tick") == [at(minutes=5)]
        assert fire_times(queue, "bad") == []
        bad.broken = False
        assert scheduler.run_once(at(minutes=5, seconds=30)) == 1  # "bad" fires late
        assert scheduler.run_once(at(minutes=10)) == 2
    assert fire_times(queue, "bad") == [at(minutes=5), at(minutes=10)]
    assert fire_times(queue, "tick") == [at(minutes=5), at(minutes=10)]
    failures = [r for r in caplog.records if "failed and did not fire" in r.getMessage()]
    # Logged once per spell of failures (not every tick), naming the schedule and error.
    assert len(failures) == 2
    assert all("'bad'" in r.getMessage() for r in failures)
    assert all("RuntimeError: this schedule has a bug" in r.getMessage() for r in failures)
