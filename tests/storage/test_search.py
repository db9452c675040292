"""Searching jobs on every backend: filters by status, type, queue, tag, meta and
creation time, stable cursors, and the labels' index serving tag and meta searches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.storage.admin import Cursor
from tests.storage.helpers import sql


def _ids(page: Any) -> list[str]:
    return [job.id for job in page.jobs]


@pytest.fixture
def labelled(queue: jobs.Queue) -> dict[str, str]:
    queue.register("email", lambda args: None)
    queue.register("sms", lambda args: None)
    return {
        "a": queue.enqueue("email", 1, tags=["welcome"], meta={"tenant": "acme", "n": 5}),
        "b": queue.enqueue("email", 2, tags=["welcome", "vip"], meta={"tenant": "zeta"}),
        "c": queue.enqueue("sms", 3, tags=["welcome"], meta={"tenant": "acme", "vip": True}),
        "d": queue.enqueue("sms", 4, queue="texts"),
    }


def test_list_jobs_filters_by_tag_meta_type_queue_and_status(
    queue: jobs.Queue, labelled: dict[str, str]
) -> None:
    a, b, c, d = (labelled[k] for k in "abcd")
    assert _ids(queue.list_jobs()) == [d, c, b, a]  # newest first
    assert _ids(queue.list_jobs(tag="welcome")) == [c, b, a]
    assert _ids(queue.list_jobs(tag="vip")) == [b]
    assert _ids(queue.list_jobs(meta={"tenant": "acme"})) == [c, a]
    assert _ids(queue.list_jobs(meta={"n": 5})) == [a]
    assert _ids(queue.list_jobs(meta={"vip": True})) == [c]
    assert _ids(queue.list_jobs(tag="welcome", meta={"tenant": "acme", "vip": True})) == [c]
    assert _ids(queue.list_jobs(tag="welcome", type="email")) == [b, a]
    assert _ids(queue.list_jobs(type="sms", queue="texts")) == [d]
    assert _ids(queue.list_jobs(tag="welcome", status="pending", queue="default")) == [c, b, a]
    assert _ids(queue.list_jobs(tag="welcome", status=jobs.JobStatus.FAILED)) == []
    assert _ids(queue.list_jobs(tag="nothing")) == []


def test_list_jobs_by_creation_time(queue: jobs.Queue, labelled: dict[str, str]) -> None:
    job = queue.get_job(labelled["b"])
    assert job is not None and job.created_at is not None
    at = job.created_at
    assert labelled["a"] not in _ids(queue.list_jobs(created_after=at))
    assert labelled["b"] in _ids(queue.list_jobs(created_after=at))
    assert labelled["b"] not in _ids(queue.list_jobs(created_before=at, tag="welcome"))
    assert _ids(queue.list_jobs(created_after=at + timedelta(days=1), tag="welcome")) == []


@pytest.mark.parametrize("search", [{}, {"tag": "bulk"}, {"meta": {"batch": "7"}}])
def test_pages_follow_each_other_with_a_stable_cursor(
    queue: jobs.Queue, search: dict[str, Any]
) -> None:
    queue.register("bulk", lambda args: None)
    # One batch shares its creation time: the enqueue order breaks the tie.
    ids = queue.enqueue_many(
        [("bulk", i, {"tags": ["bulk"], "meta": {"batch": 7}}) for i in range(7)]
    )
    seen: list[str] = []
    page = queue.list_jobs(limit=3, **search)
    while True:
        seen += _ids(page)
        if page.next is None:
            break
        newer = queue.enqueue("bulk", 99, tags=["bulk"], meta={"batch": 7})  # never shifts pages
        page = queue.list_jobs(limit=3, after=page.next.token(), **search)
        assert newer not in _ids(page)
    assert seen == ids[::-1]


def test_bad_search_input_is_refused(queue: jobs.Queue) -> None:
    with pytest.raises(ValueError, match="unknown status 'done'"):
        queue.list_jobs(status="done")
    with pytest.raises(ValueError, match="limit must be"):
        queue.list_jobs(limit=0)
    with pytest.raises(ValueError, match="not a cursor"):
        queue.list_jobs(after="yesterday")
    with pytest.raises(ValueError, match="strings, integers and booleans"):
        queue.list_jobs(meta={"ratio": 0.5})
    with pytest.raises(ValueError, match="tag must be a non-empty string"):
        queue.list_jobs(tag="")


def test_labels_of_jobs_stored_before_migration_12_are_filled_in(
    storage: jobs.SQLStorage, queue: jobs.Queue
) -> None:
    from tests.helpers import undo_migration_12

    queue.register("old", lambda args: None)
    with storage.engine.begin() as conn:
        undo_migration_12(conn)
    old = queue.enqueue("old", 1, tags=["legacy"], meta={"k": "v"})
    storage.migrate()
    assert _ids(queue.list_jobs(tag="legacy")) == [old]
    assert _ids(queue.list_jobs(meta={"k": "v"})) == [old]


def _plan(storage: jobs.SQLStorage, text: str, params: dict[str, Any]) -> str:
    """The database's plan for ``text`` (a search's statement with its parameters)."""
    prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN ", "mysql": "EXPLAIN "}
    raw = storage.engine.raw_connection()
    try:
        cur = storage.dialect.cursor(raw.driver_connection)
        cur.execute(prefix[storage.dialect.name] + text, params)
        return "\n".join(" ".join(str(v) for v in row) for row in cur.fetchall())
    finally:
        raw.close()


def test_a_search_by_tag_reads_the_labels_index(
    storage: jobs.SQLStorage, queue: jobs.Queue
) -> None:
    queue.register("t", lambda args: None)
    queue.enqueue_many([("t", i, {"tags": [f"tag-{i % 50}"]}) for i in range(500)])
    queue.enqueue_many([("t", i) for i in range(500)])
    if storage.dialect.name == "postgresql":
        sql(storage, "ANALYZE sdj_job_labels")
        sql(storage, "ANALYZE sdj_jobs")
    sqls = storage.dialect.admin_sql
    text = sqls["labelled_page"].format(
        filters=sqls["labelled_status"] + sqls["labelled_older"], order="DESC"
    )
    t = storage.dialect.time_param
    cursor = Cursor.parse("1" + "0" * 16 + ".5")
    params = {"kind": "t", "label": "tag-7", "value": "", "status": "pending", "limit": 101}
    params |= {"created_at": t(cursor.created_at), "tie": cursor.tie}
    plan = _plan(storage, text, params)
    # The labels' primary key (kind, label, value, created, job_seq) is the index read
    # (on a table this small PostgreSQL may sort its few matches rather than read them
    # in order; at scale it reads the index backward: see bench/ops_workloads.py).
    expected = {
        "sqlite": "SEARCH l USING PRIMARY KEY (kind=? AND label=? AND value=?",
        "postgresql": "sdj_job_labels_pkey",
        "mysql": "PRIMARY",
    }[storage.dialect.name]
    assert expected in plan, plan
    if storage.dialect.name == "sqlite":
        assert "TEMP B-TREE" not in plan, plan
