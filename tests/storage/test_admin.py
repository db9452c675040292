"""``storage/admin.py``: the dashboard's and the CLI's queries, on every backend."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta

import pytest

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.storage.admin import STATEMENTS, Admin, Cursor
from durable_jobs.storage.postgres import PostgresDialect
from durable_jobs.storage.sqlite import SQLiteDialect
from tests.helpers import wait_for

from .helpers import FAST

SQLITE, POSTGRES = SQLiteDialect.admin_sql, PostgresDialect.admin_sql
_SQLITE_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")


# -- statements ---------------------------------------------------------------------------


# Backend-specific: checks the SQLite and PostgreSQL statement tables against each other;
# a new backend adds its table here.
def test_both_dialects_define_the_same_statements_and_parameters() -> None:
    assert set(SQLITE) == set(POSTGRES) == set(STATEMENTS)
    for name in STATEMENTS:
        assert set(_SQLITE_PARAM.findall(SQLITE[name])) == set(
            _PSYCOPG_PARAM.findall(POSTGRES[name])
        ), name


# Backend-specific: SQLite in memory, no backend fixture.
def test_every_sqlite_statement_compiles_against_the_schema() -> None:
    conn = sqlite3.connect(":memory:")
    for statements in SQLiteDialect.migrations:
        for statement in statements:
            conn.execute(statement)
    fragments = "".join(SQLITE[n] for n in ("by_queue", "by_type", "older_than"))
    texts = [SQLITE["jobs_page"].format(filters=fragments, order="DESC")]
    texts += [SQLITE[n] for n in STATEMENTS if not SQLITE[n].startswith(" AND")]
    for text in texts:
        if "{" in text:
            continue
        conn.execute("EXPLAIN " + text, dict.fromkeys(_SQLITE_PARAM.findall(text)))
    # The listing is one range scan of the status index, already in order: no sort step.
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + texts[0], dict.fromkeys(_SQLITE_PARAM.findall(texts[0]))
    ).fetchall()
    details = " ".join(row[-1] for row in plan)
    assert "sdj_jobs_status" in details and "TEMP B-TREE" not in details


def test_cursor_tokens_round_trip() -> None:
    cursor = Cursor(utcnow(), 12345)
    assert Cursor.parse(cursor.token()) == cursor
    for bad in ("", "x.1", "1", "1.x", f"{10**30}.1", f"1.{2**63}", "1.-1"):
        with pytest.raises(ValueError):
            Cursor.parse(bad)


# -- pages, counts and stats --------------------------------------------------------------


def test_pages_walk_every_status_in_order_both_ways(storage: jobs.SQLStorage) -> None:
    # One enqueue_many: every job has the same created_at, so only the enqueue order
    # orders them, across statuses that each come from their own index scan.
    queue = jobs.Queue(storage)
    ids = queue.enqueue_many([("t", n) for n in range(30)])
    claimed = storage.claim("default", "w", 12)
    for job in claimed[:4]:
        storage.complete(job.id)
    for job in claimed[4:8]:
        storage.fail(job.id, "no", None)
    for job in claimed[8:10]:
        storage.fail(job.id, "again", utcnow())
    admin = Admin(storage)
    expected = list(reversed(ids))

    pages, page = [], admin.jobs_page(limit=7)
    assert page.newer is None
    pages.append(page)
    while page.older is not None:
        page = admin.jobs_page(before=page.older, limit=7)
        pages.append(page)
    assert [len(p.jobs) for p in pages] == [7, 7, 7, 7, 2]
    assert [j.id for p in pages for j in p.jobs] == expected
    assert {j.status.value for p in pages for j in p.jobs} == {
        "pending",
        "running",
        "completed",
        "failed",
        "retrying",
    }
    back = []
    while page.newer is not None:
        page = admin.jobs_page(after=page.newer, limit=7)
        back.append([j.id for j in page.jobs])
    assert back == [[j.id for j in p.jobs] for p in reversed(pages[:-1])]

    failed = admin.jobs_page(status=jobs.JobStatus.FAILED, limit=3)
    assert [j.id for j in failed.jobs] == [j.id for j in reversed(claimed[4:8])][:3]
    rest = admin.jobs_page(status=jobs.JobStatus.FAILED, before=failed.older, limit=3)
    assert [j.id for j in rest.jobs] == [claimed[4].id] and rest.older is None
    assert admin.jobs_page(job_type="t", queue="nope").jobs == []
    with pytest.raises(ValueError):
        admin.jobs_page(before=failed.older, after=failed.older)


def test_counts_throughput_and_oldest_due(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    queue.register("ok", lambda: None)

    def bad() -> None:
        raise RuntimeError("no")

    queue.register("bad", bad, retries=0)
    ids = [queue.enqueue("ok") for _ in range(3)] + [queue.enqueue("bad")]
    with queue.worker(**FAST):
        wait_for(lambda: all((j := queue.get_job(i)) and j.status.is_terminal for i in ids))
    old = queue.enqueue("ok", queue="idle", at=utcnow() - timedelta(minutes=5))
    queue.enqueue("ok", queue="idle")
    queue.enqueue("ok", queue="idle", delay=600)
    admin = Admin(storage)

    assert admin.counts() == [
        ("default", jobs.JobStatus.COMPLETED, 3),
        ("default", jobs.JobStatus.FAILED, 1),
        ("idle", jobs.JobStatus.PENDING, 3),
    ]
    minutes = admin.throughput()
    assert len(minutes) == 60 and minutes[-1].start <= utcnow() < minutes[-1].start + timedelta(
        minutes=1
    )
    assert (sum(m.completed for m in minutes), sum(m.failed for m in minutes)) == (3, 1)
    busy = [m for m in minutes if m.completed or m.failed]
    assert busy and all(m.failure_rate is not None for m in busy)
    oldest = admin.oldest_due()
    assert oldest is not None and oldest.id == old


def test_get_jobs_by_id(storage: jobs.SQLStorage) -> None:
    ids = jobs.Queue(storage).enqueue_many([("t", n) for n in range(5)])
    admin = Admin(storage)
    found = admin.get_jobs([ids[3], "nope", ids[0], ids[3]])
    assert sorted(j.id for j in found) == sorted([ids[0], ids[3]])
    assert {j.id: json.loads(j.args) for j in found} == {ids[0]: 0, ids[3]: 3}
    assert admin.get_jobs([]) == []


def test_queue_stats(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    queue.enqueue("a", at=utcnow() - timedelta(minutes=5))
    queue.enqueue("a", delay=3600)  # not due: not in the oldest due age
    queue.enqueue("b", queue="other")
    storage.claim("other", "w", 1)
    queue.enqueue("c", queue="later", delay=3600)
    stats = {s.queue: s for s in Admin(storage).queue_stats()}
    assert list(stats) == ["default", "later", "other"]
    assert stats["default"].counts == {jobs.JobStatus.PENDING: 2}
    oldest = stats["default"].oldest_due
    assert oldest is not None and timedelta(minutes=5) <= oldest < timedelta(minutes=6)
    assert stats["other"].counts == {jobs.JobStatus.RUNNING: 1}
    assert stats["other"].oldest_due is None and stats["later"].oldest_due is None


# -- retry and delete ---------------------------------------------------------------------


def test_retry_and_delete(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    first, second = queue.enqueue_many([("t", 1), ("t", 2)])
    admin = Admin(storage)
    assert admin.retry(first) is None  # pending: nothing to retry
    [job] = storage.claim("default", "w", 1)
    storage.save_checkpoint(jobs.Checkpoint(job_id=job.id, call_index=0, call_type="s"))
    assert admin.delete(job.id) is None  # running
    storage.fail(job.id, "boom", None)
    returned = admin.retry(job.id)
    retried = storage.get_job(job.id)
    assert retried is not None and (retried.status, retried.attempt) == ("pending", 0)
    assert returned == retried and retried.last_error == "boom"  # kept until the next run
    assert len(storage.get_checkpoints(job.id)) == 1  # kept: the workflow resumes
    assert admin.delete(job.id) == retried
    assert storage.get_job(job.id) is None and storage.get_checkpoints(job.id) == []
    assert admin.delete(job.id) is None and admin.retry("nope") is None
    assert storage.get_job(second) is not None


def test_delete_a_running_job_only_with_force(storage: jobs.SQLStorage) -> None:
    job_id = jobs.Queue(storage).enqueue("t")
    storage.claim("default", "w", 1)
    storage.save_checkpoint(jobs.Checkpoint(job_id=job_id, call_index=0, call_type="s"))
    admin = Admin(storage)
    assert admin.delete(job_id) is None and storage.get_job(job_id) is not None
    deleted = admin.delete(job_id, force=True)
    assert deleted is not None and (deleted.id, deleted.status) == (job_id, "running")
    assert storage.get_job(job_id) is None and storage.get_checkpoints(job_id) == []


# -- schema -------------------------------------------------------------------------------


# SQLite only as written (it names a SQLite file; no backend fixture), though nothing in it
# is SQLite's own: taking `fresh_url` instead would run it on every backend.
def test_has_schema_only_looks(fresh_url: str) -> None:
    storage = jobs.SQLStorage(fresh_url)
    try:
        admin = Admin(storage)
        assert not admin.has_schema()
        assert admin.schedules() is None
        assert not admin.has_schema()  # looking created nothing
        storage.migrate()
        assert admin.has_schema() and admin.schedules() == []
    finally:
        storage.close()
