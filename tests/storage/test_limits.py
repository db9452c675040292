"""Conformance of ``SQLStorage``: claims within fleet-wide concurrency caps and rate limits
(``storage/limits.py``), on every backend; and the limits' statements in every dialect."""

from __future__ import annotations

import math
import random
import re
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from durable_jobs.job import utcnow
from durable_jobs.options import Limits, check_rate_limit
from durable_jobs.storage import ClaimedJobs, SQLStorage, TypeLimits, limits
from durable_jobs.storage.dialects import Dialect
from durable_jobs.storage.mysql import MySQLDialect
from durable_jobs.storage.postgres import PostgresDialect
from durable_jobs.storage.sqlite import SQLiteDialect
from tests.helpers import undo_migration_10

from .helpers import W1, W2, get, make_job, sql

HOUR = 3600.0


def capped(cap: int = 2, *, keyed: bool = False) -> TypeLimits:
    return TypeLimits("capped", concurrency=cap, concurrency_keyed=keyed)


def rated(rate: int = 3, per: float = HOUR, *, keyed: bool = False) -> TypeLimits:
    return TypeLimits("rated", rate=rate, per=per, rate_keyed=keyed)


def claim(
    storage: SQLStorage, worker: str, limit: int, *types: TypeLimits, plain: bool = True
) -> ClaimedJobs:
    jobs = storage.claim("default", worker, limit, limited=types, plain=plain)
    assert isinstance(jobs, ClaimedJobs)
    return jobs


def statuses(storage: SQLStorage, ids: list[str]) -> list[str]:
    return [get(storage, job_id).status.value for job_id in ids]


# -- concurrency caps ---------------------------------------------------------------------


@pytest.mark.parametrize("plain", [True, False], ids=["with-plain", "alone"])
def test_a_cap_admits_no_more_jobs_than_it_has_room_for(storage: SQLStorage, plain: bool) -> None:
    storage.enqueue_many([make_job("capped") for _ in range(5)])
    first = claim(storage, W1, 10, capped(2), plain=plain)
    assert [job.type for job in first] == ["capped", "capped"]
    assert first.held == {"capped": math.inf}  # room comes back when a run ends
    # Running jobs count whichever worker runs them.
    assert claim(storage, W2, 10, capped(2), plain=plain) == []
    assert storage.complete(first[0].id, b"1", worker_id=W1, fence=first[0].fence)
    again = claim(storage, W2, 10, capped(2), plain=plain)
    assert len(again) == 1 and again[0].locked_by == W2
    assert again.held == {"capped": math.inf}
    # A claim smaller than the room: the type had more to give.
    assert storage.complete(again[0].id, b"1", worker_id=W2, fence=again[0].fence)
    small = claim(storage, W2, 1, capped(2), plain=plain)
    assert len(small) == 1 and small.held == {} and small.drained == set()


@pytest.mark.parametrize("plain", [True, False], ids=["with-plain", "alone"])
def test_a_rate_limited_claim_alone_spends_its_tokens(storage: SQLStorage, plain: bool) -> None:
    storage.enqueue_many([make_job("rated") for _ in range(2)])
    jobs = claim(storage, W1, 10, rated(3), plain=plain)
    assert len(jobs) == 2 and jobs.drained == {"rated"}
    storage.enqueue_many([make_job("rated") for _ in range(3)])
    jobs = claim(storage, W1, 10, rated(3), plain=plain)
    assert len(jobs) == 1 and 1190 < jobs.held["rated"] <= 1200


@pytest.mark.parametrize("plain", [True, False], ids=["with-plain", "alone"])
def test_a_limited_claim_takes_every_job_due_at_its_now(storage: SQLStorage, plain: bool) -> None:
    # A job due at the claim's now but after the database's time of the look: SQLite's
    # clock counts milliseconds, so a job enqueued in the claim's millisecond is one.
    soon = utcnow() + timedelta(seconds=5)
    [job_id] = storage.enqueue_many([make_job("rated", run_at=soon)])
    jobs = storage.claim("default", W1, 10, limited=[rated(3)], plain=plain, now=soon)
    assert [job.id for job in jobs] == [job_id]
    assert jobs[0].started_at is not None and jobs[0].started_at >= soon


def test_jobs_held_back_stay_pending(storage: SQLStorage) -> None:
    ids = storage.enqueue_many([make_job("capped") for _ in range(4)])
    taken = {job.id for job in claim(storage, W1, 10, capped(1))}
    assert len(taken) == 1
    rest = [job_id for job_id in ids if job_id not in taken]
    assert statuses(storage, rest) == ["pending"] * 3
    assert all(get(storage, job_id).attempt == 0 for job_id in rest)


def test_a_type_at_its_cap_never_holds_up_other_types(storage: SQLStorage) -> None:
    # The capped jobs come first in dequeue order, and far more than the claim's limit.
    storage.enqueue_many([make_job("capped", priority=5) for _ in range(30)])
    storage.enqueue_many([make_job("other") for _ in range(3)])
    storage.enqueue_many([make_job("plain") for _ in range(3)])
    other = TypeLimits("other", concurrency=10)
    jobs = claim(storage, W1, 10, capped(2), other)
    assert sorted(job.type for job in jobs) == ["capped"] * 2 + ["other"] * 3 + ["plain"] * 3
    assert jobs.held == {"capped": math.inf}
    assert jobs.drained == {"other"}
    # The next claim finds the other types' jobs gone and the capped type at its cap.
    assert claim(storage, W1, 10, capped(2), other) == []


def test_limited_and_plain_jobs_are_claimed_together_in_dequeue_order(
    storage: SQLStorage,
) -> None:
    ids = storage.enqueue_many(
        [
            make_job("plain", priority=1),
            make_job("capped", priority=3),
            make_job("plain", priority=2),
            make_job("capped", priority=0),
        ]
    )
    jobs = claim(storage, W1, 2, capped(5))
    assert [job.id for job in jobs] == [ids[1], ids[2]]
    # The capped type had more to give than the claim took: it is not held back.
    assert jobs.held == {} and jobs.drained == set()
    rest = claim(storage, W1, 5, capped(5))
    assert [job.id for job in rest] == [ids[0], ids[3]]


def test_a_claim_of_limited_types_alone_leaves_plain_jobs(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("plain"), make_job("capped"), make_job("plain")])
    jobs = claim(storage, W1, 10, capped(5), plain=False)
    assert [job.type for job in jobs] == ["capped"]


def test_a_limited_type_is_never_claimed_as_a_plain_job(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("capped") for _ in range(4)])
    # Held back (the other worker's runs fill its cap), it is still left out.
    assert len(claim(storage, W2, 10, capped(2))) == 2
    assert claim(storage, W1, 10, capped(2)) == []


def test_a_limited_claim_honours_the_claims_own_filters(storage: SQLStorage) -> None:
    later = utcnow() + timedelta(hours=1)
    ids = storage.enqueue_many(
        [
            make_job("capped", run_at=later),  # not due
            make_job("capped", max_retries=0),  # a single run: not claimed ahead
            make_job("capped", queue="other"),
        ]
    )
    ahead = storage.claim("default", W1, 10, min_retries=1, limited=[capped(5)])
    assert ahead == []
    jobs = claim(storage, W1, 10, capped(5))
    assert [job.id for job in jobs] == [ids[1]]
    assert jobs.drained == {"capped"}


def test_a_paused_queue_gives_no_limited_jobs(storage: SQLStorage) -> None:
    storage.enqueue(make_job("capped"))
    now = storage.dialect.time_param(utcnow())
    sql(storage, "INSERT INTO sdj_queue_pauses (queue, paused_at) VALUES ('default', :t)", t=now)
    assert claim(storage, W1, 10, capped(5)) == []
    sql(storage, "DELETE FROM sdj_queue_pauses")
    assert len(claim(storage, W1, 10, capped(5))) == 1


def test_a_taken_back_run_gives_its_slot_back(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("capped") for _ in range(4)])
    dead = storage.claim("default", W1, 10, limited=[capped(2)], lock_timeout=0.05)
    assert len(dead) == 2
    assert claim(storage, W2, 10, capped(2)) == []
    time.sleep(0.3)  # W1 died: its locks expire
    assert storage.release_expired_locks() == 2
    assert statuses(storage, [job.id for job in dead]) == ["retrying", "retrying"]
    # Its runs no longer count: the two other jobs run (the taken-back ones wait their
    # backoff).
    assert len(claim(storage, W2, 10, capped(2))) == 2


def test_runs_that_end_in_any_way_give_their_slot_back(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("capped") for _ in range(6)])
    later = utcnow() + timedelta(hours=1)
    a, b = claim(storage, W1, 10, capped(2))
    assert storage.fail(a.id, "boom", later, worker_id=W1, fence=a.fence)  # to retry later
    [c] = claim(storage, W1, 10, capped(2))
    storage.release(W1, [(b.id, b.fence)])  # given back unstarted
    [d] = claim(storage, W1, 10, capped(2))
    assert d.id == b.id  # first in dequeue order again
    assert storage.suspend(c.id, worker_id=W1, fence=c.fence, until=later, waiting_for="x")
    [e] = claim(storage, W1, 10, capped(2))
    assert storage.fail(e.id, "boom", None, worker_id=W1, fence=e.fence)  # for good
    assert len(claim(storage, W1, 10, capped(2))) == 1


def test_a_completion_frees_its_slot_for_the_claim_in_its_transaction(
    storage: SQLStorage,
) -> None:
    from durable_jobs.storage import Claim, Outcome

    storage.enqueue_many([make_job("capped") for _ in range(3)])
    [job] = claim(storage, W1, 10, capped(1))
    wanted = Claim("default", 5, limited=[capped(1)])
    accepted, [claimed] = storage.complete_and_claim(
        W1, [Outcome(job.id, job.fence, b"1")], [wanted]
    )
    assert accepted == {job.id}
    assert len(claimed) == 1 and claimed[0].id != job.id


# -- concurrency keys ---------------------------------------------------------------------


def test_a_keyed_cap_holds_for_each_key(storage: SQLStorage) -> None:
    keys = ["a", "a", "a", "b", "b", None, None]
    storage.enqueue_many([make_job("capped", concurrency_key=k) for k in keys])
    jobs = claim(storage, W1, 10, capped(1, keyed=True))
    # A job without a key (its producer did not know the type's limits) counts in a
    # group of its own.
    assert sorted((job.concurrency_key or "") for job in jobs) == ["", "a", "b"]
    assert jobs.held == {"capped": math.inf}
    assert claim(storage, W2, 10, capped(1, keyed=True)) == []


def test_a_keyed_claim_reads_past_keys_at_their_cap(storage: SQLStorage) -> None:
    # More jobs of a full key than a look reads, ahead of another key's.
    storage.enqueue_many([make_job("capped", concurrency_key="a") for _ in range(150)])
    b = storage.enqueue(make_job("capped", concurrency_key="b"))
    [a] = claim(storage, W1, 1, capped(1, keyed=True))
    jobs = claim(storage, W2, 10, capped(1, keyed=True))
    assert [job.id for job in jobs] == [b]
    assert a.concurrency_key == "a"


def test_a_keyed_cap_counts_other_workers_runs_by_key(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("capped", concurrency_key=k) for k in "aabb"])
    first = claim(storage, W1, 1, capped(1, keyed=True))
    assert [job.concurrency_key for job in first] == ["a"]
    second = claim(storage, W2, 10, capped(1, keyed=True))
    assert [job.concurrency_key for job in second] == ["b"]


# -- rate limits --------------------------------------------------------------------------


def age_buckets(storage: SQLStorage, seconds: float) -> None:
    """Make every token bucket ``seconds`` older (as if that long had passed)."""
    rows = sql(storage, "SELECT type, limit_key, refilled_at FROM sdj_limits")
    d = storage.dialect
    for job_type, key, refilled_at in rows:
        older = d.time_value(refilled_at) - timedelta(seconds=seconds)
        sql(
            storage,
            "UPDATE sdj_limits SET refilled_at = :t WHERE type = :type AND limit_key = :key",
            t=d.time_param(older),
            type=job_type,
            key=key,
        )


def test_a_rate_limit_spends_a_token_per_run_started(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("rated") for _ in range(6)])
    jobs = claim(storage, W1, 10, rated(3))
    assert len(jobs) == 3
    # The next token comes a third of the window later (1200 s).
    assert 1190 < jobs.held["rated"] <= 1200
    assert claim(storage, W2, 10, rated(3)) == []
    age_buckets(storage, 1200)
    assert len(claim(storage, W2, 10, rated(3))) == 1


def test_a_bucket_holds_one_window_of_tokens_at_most(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("rated") for _ in range(10)])
    assert len(claim(storage, W1, 1, rated(3))) == 1
    age_buckets(storage, 10 * HOUR)  # idle for ten windows
    assert len(claim(storage, W1, 10, rated(3))) == 3


def test_runs_started_again_spend_tokens_too(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("rated") for _ in range(3)])
    [a, _] = claim(storage, W1, 2, rated(3))
    storage.release(W1, [(a.id, a.fence)])  # its token is not given back
    assert len(claim(storage, W1, 10, rated(3))) == 1


def test_rate_keys_have_buckets_of_their_own(storage: SQLStorage) -> None:
    keys = ["x"] * 5 + ["y"] * 5 + [None] * 5
    storage.enqueue_many([make_job("rated", rate_key=k) for k in keys])
    jobs = claim(storage, W1, 20, rated(2, keyed=True))
    assert sorted((job.rate_key or "") for job in jobs) == ["", "", "x", "x", "y", "y"]
    assert 1790 < claim(storage, W2, 20, rated(2, keyed=True)).held["rated"] <= 1800
    age_buckets(storage, 1800)
    assert len(claim(storage, W2, 20, rated(2, keyed=True))) == 3


def test_full_rate_key_buckets_are_pruned(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("rated", rate_key=k) for k in ("x", "y")])
    assert len(claim(storage, W1, 10, rated(2, keyed=True))) == 2
    keyed = "SELECT COUNT(*) FROM sdj_limits WHERE limit_key <> ''"
    assert sql(storage, keyed)[0][0] == 2
    age_buckets(storage, 2 * HOUR)
    storage.enqueue(make_job("rated", rate_key="z"))
    limits._prunes._last.pop(storage, None)  # a prune is due
    assert len(claim(storage, W1, 10, rated(2, keyed=True))) == 1
    assert [
        r[0] for r in sql(storage, "SELECT limit_key FROM sdj_limits WHERE limit_key <> ''")
    ] == ["z"]


def test_a_cap_and_a_rate_limit_together(storage: SQLStorage) -> None:
    storage.enqueue_many([make_job("both") for _ in range(10)])
    both = TypeLimits("both", concurrency=3, rate=2, per=HOUR)
    jobs = claim(storage, W1, 10, both)
    assert len(jobs) == 2  # the rate binds first
    assert 1790 < jobs.held["both"] <= 1800
    age_buckets(storage, 10 * HOUR)
    jobs = claim(storage, W1, 10, both)
    assert len(jobs) == 1 and jobs.held == {"both": math.inf}  # now the cap


# -- racing claimers ----------------------------------------------------------------------


def test_racing_claimers_never_run_more_than_the_cap(db_url: str) -> None:
    cap, total, claimers = 3, 60, 6
    setup = SQLStorage(db_url)
    setup.enqueue_many([make_job("capped") for _ in range(total)])
    setup.close()
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        storage = SQLStorage(db_url)
        worker = f"w{n}"
        try:
            while True:
                jobs = storage.claim("default", worker, 2, limited=[capped(cap)])
                if not jobs:
                    with lock:
                        if len(spans) >= total:
                            return
                    time.sleep(0.002)
                    continue
                began = time.monotonic()  # after the claim committed
                time.sleep(random.uniform(0.001, 0.01))
                ended = time.monotonic()  # before the completion commits
                for job in jobs:
                    assert storage.complete(job.id, None, worker_id=worker, fence=job.fence)
                with lock:
                    spans.extend((began, ended) for _ in jobs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            storage.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(spans) == total
    # Each span lies within its job's run as the database counts it.
    assert max_overlap(spans) <= cap


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans that overlap at any moment (one ending as another starts: apart)."""
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


# -- schema -------------------------------------------------------------------------------


def test_a_database_of_version_9_migrates_to_the_limits(storage: SQLStorage) -> None:
    with storage.engine.begin() as conn:
        undo_migration_10(conn)
    assert storage.schema_version() == 9
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    storage.enqueue(make_job("capped"))
    assert len(claim(storage, W1, 10, capped(1))) == 1
    assert "sdj_limits" in sa.inspect(storage.engine).get_table_names()


# -- statements (no database) -------------------------------------------------------------

DIALECTS: list[type[Dialect]] = [SQLiteDialect, PostgresDialect, MySQLDialect]
_SQLITE_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")


def _params(dialect: type[Dialect], name: str) -> set[str]:
    text = dialect.limits_sql[name]
    found = set((_SQLITE_PARAM if dialect is SQLiteDialect else _PSYCOPG_PARAM).findall(text))
    if name == "claim_ids" and "{ids}" in text:  # bound one parameter per id (mysql.py)
        found.add("ids")
    return found


@pytest.mark.parametrize("dialect", DIALECTS, ids=[d.name for d in DIALECTS])
def test_every_dialect_lists_the_limits_statements_in_order(dialect: type[Dialect]) -> None:
    assert tuple(dialect.limits_sql) == limits.STATEMENTS


@pytest.mark.parametrize("name", limits.STATEMENTS)
def test_a_limits_statement_takes_the_same_parameters_in_every_dialect(name: str) -> None:
    first, *others = DIALECTS
    for other in others:
        assert _params(first, name) == _params(other, name)


def test_every_sqlite_limits_statement_compiles_against_the_migrated_schema() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(SQLiteDialect.create_version_table)
        for statements in SQLiteDialect.migrations:
            for statement in statements:
                conn.execute(statement)
        for name, text in SQLiteDialect.limits_sql.items():
            params = dict.fromkeys(_SQLITE_PARAM.findall(text))
            try:
                conn.execute("EXPLAIN " + text, params).fetchall()
            except sqlite3.Error as exc:
                raise AssertionError(f"statement {name!r} does not compile: {exc}") from exc
        # The claim of chosen ids finds them by their primary key, not by status.
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + SQLiteDialect.limits_sql["claim_ids"],
            dict.fromkeys(_SQLITE_PARAM.findall(SQLiteDialect.limits_sql["claim_ids"]), "[]"),
        ).fetchall()
        assert "sdj_jobs_status" not in str(plan)
    finally:
        conn.close()


def test_registration_limits_become_the_claims_limits() -> None:
    def key(args: object) -> str:
        return str(args)

    assert limits.type_limits("t", Limits(concurrency=3)) == TypeLimits("t", concurrency=3)
    keyed = Limits(concurrency=1, concurrency_key=key, rate_limit=check_rate_limit("100/m"))
    assert limits.type_limits("t", keyed) == TypeLimits(
        "t", concurrency=1, concurrency_keyed=True, rate=100, per=60.0
    )
    by_rate_key = Limits(rate_limit=check_rate_limit("5/h"), rate_key=key)
    assert limits.type_limits("t", by_rate_key) == TypeLimits(
        "t", rate=5, per=3600.0, rate_keyed=True
    )
