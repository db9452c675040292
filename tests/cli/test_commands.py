"""Every ``sdj`` command through the CLI runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.scheduler import Scheduler

COMMANDS = [
    [],
    ["migrate"],
    ["worker"],
    ["enqueue"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "retry"],
    ["jobs", "delete"],
    ["stats"],
    ["schedules"],
    ["demo"],
]


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def as_json(result: Any) -> Any:
    return json.loads(ok(result))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sdj")
def test_help_everywhere(sdj: Any, command: list[str]) -> None:
    out = ok(sdj(*command, "--help"))
    assert "Usage:" in out
    if command not in ([], ["jobs"]):
        assert "--database-url" in out


def test_version(sdj: Any) -> None:
    assert ok(sdj("--version")).strip() == f"sdj (simple-durable-jobs) {jobs.__version__}"


def test_migrate_is_idempotent(sdj: Any, db_url: str) -> None:
    for _ in range(2):
        assert "schema version" in ok(sdj("migrate", "--database-url", db_url))


def test_migrate_creates_a_new_sqlite_database(sdj: Any, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    ok(sdj("migrate", "--database-url", url))
    assert ok(sdj("stats", "--database-url", url))


def test_enqueue_with_options(sdj: Any, db_url: str, storage: jobs.SQLStorage) -> None:
    args = ["--args", '{"to": "u@example.com"}', "--queue", "emails", "--priority", "5"]
    args += ["--retries", "1", "--delay", "60", "--database-url", db_url, "--json"]
    shown = as_json(sdj("enqueue", "send-email", *args))
    job = storage.get_job(shown["id"])
    assert job is not None
    assert (job.type, job.queue, job.priority, job.max_retries) == ("send-email", "emails", 5, 1)
    assert json.loads(job.args) == {"to": "u@example.com"}
    assert job.run_at is not None and job.run_at - job.created_at >= timedelta(seconds=59)
    assert shown["status"] == "pending"


def test_enqueue_defaults_and_plain_output(sdj: Any, db_url: str, storage: jobs.SQLStorage) -> None:
    out = ok(sdj("enqueue", "cleanup", "--database-url", db_url))
    job_id = out.split()[2]
    job = storage.get_job(job_id)
    assert job is not None
    assert (job.queue, job.priority, job.max_retries, job.args) == ("default", 0, 3, b"null")


def test_database_url_from_environment(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    queue.enqueue("from-env")
    listed = as_json(sdj("jobs", "list", "--json", env={"SDJ_DATABASE_URL": db_url}))
    assert [j["type"] for j in listed] == ["from-env"]


def test_jobs_list_filters(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    a = queue.enqueue("a", queue="q1")
    b = queue.enqueue("b", queue="q2")
    c = queue.enqueue("a", queue="q2", priority=1)  # claimed before b
    _fail(queue.storage, c)
    url = ["--database-url", db_url, "--json"]

    def ids(*filters: str) -> list[str]:
        return [j["id"] for j in as_json(sdj("jobs", "list", *filters, *url))]

    assert ids() == [c, b, a]  # newest first
    assert ids("--type", "a") == [c, a]
    assert ids("--queue", "q2") == [c, b]
    assert ids("--status", "failed") == [c]
    assert ids("--status", "pending", "--queue", "q2") == [b]
    assert ids("--limit", "1") == [c]
    table = ok(sdj("jobs", "list", "--database-url", db_url))
    assert all(job_id in table for job_id in (a, b, c)) and "failed" in table


def test_jobs_show_with_checkpoints(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("workflow", {"order": 7})
    queue.storage.save_checkpoint(
        jobs.Checkpoint(job_id=job_id, call_index=0, call_type="charge", result=b'"r-1"')
    )
    shown = as_json(sdj("jobs", "show", job_id, "--database-url", db_url, "--json"))
    assert shown["args"] == {"order": 7}
    assert [(c["call_index"], c["call_type"], c["result"]) for c in shown["checkpoints"]] == [
        (0, "charge", "r-1")
    ]
    table = ok(sdj("jobs", "show", job_id, "--database-url", db_url))
    assert job_id in table and "checkpoints" in table and "charge" in table


def test_jobs_show_a_failed_jobs_traceback_and_where_it_ran(
    sdj: Any, db_url: str, queue: jobs.Queue
) -> None:
    @queue.job(retries=0)
    def doomed() -> None:
        raise LookupError("no such customer")

    job_id = queue.enqueue(doomed)
    with queue.worker(poll_interval=0.05) as worker, pytest.raises(jobs.JobFailed):
        queue.result(job_id, timeout=30)
    shown = as_json(sdj("jobs", "show", job_id, "--database-url", db_url, "--json"))
    assert shown["last_error"] == "LookupError: no such customer"
    assert 'raise LookupError("no such customer")' in shown["traceback"]
    assert (shown["completed_at"], shown["locked_by"]) == (None, None)
    assert shown["finished_at"] is not None and shown["finished_by"] == worker.id
    table = ok(sdj("jobs", "show", job_id, "--database-url", db_url))
    assert "traceback of the last failed run" in table
    assert 'raise LookupError("no such customer")' in table


def test_jobs_retry_gives_a_failed_job_a_fresh_start(
    sdj: Any, db_url: str, queue: jobs.Queue
) -> None:
    job_id = queue.enqueue("flaky", retries=0)
    queue.storage.save_checkpoint(jobs.Checkpoint(job_id=job_id, call_index=0, call_type="step"))
    _fail(queue.storage, job_id)
    shown = as_json(sdj("jobs", "retry", job_id, "--database-url", db_url, "--json"))
    assert (shown["status"], shown["attempt"]) == ("pending", 0)
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.PENDING
    assert job.completed_at is None and job.finished_at is None and job.last_error == "boom"
    assert len(queue.storage.get_checkpoints(job_id)) == 1  # the workflow resumes after it
    refused = sdj("jobs", "retry", job_id, "--database-url", db_url)
    assert refused.exit_code == 1 and "is pending" in refused.stderr


def test_jobs_delete(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    done = queue.enqueue("done")
    storage.save_checkpoint(jobs.Checkpoint(job_id=done, call_index=0, call_type="step"))
    assert "deleted job" in ok(sdj("jobs", "delete", done, "--database-url", db_url))
    assert storage.get_job(done) is None and storage.get_checkpoints(done) == []

    running = queue.enqueue("busy")
    storage.claim("default", "w1", 1)
    refused = sdj("jobs", "delete", running, "--database-url", db_url)
    assert refused.exit_code == 1 and "--force" in refused.stderr
    shown = as_json(sdj("jobs", "delete", running, "--force", "--database-url", db_url, "--json"))
    assert shown["status"] == "running" and storage.get_job(running) is None


def test_stats(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    queue.enqueue("a")
    queue.enqueue("a", delay=3600)  # not due: not in the oldest due age
    _fail(queue.storage, queue.enqueue("b", queue="other"))
    stats = as_json(sdj("stats", "--database-url", db_url, "--json"))
    default, other = stats["queues"]["default"], stats["queues"]["other"]
    assert (default["pending"], default["failed"], other["failed"]) == (2, 0, 1)
    assert 0 <= default["oldest_due_seconds"] < 60 and other["oldest_due_seconds"] is None
    assert stats["live_workers"] == 0
    table = ok(sdj("stats", "--database-url", db_url))
    assert "default" in table and "other" in table and "OLDEST DUE" in table


def test_stats_of_an_empty_database(sdj: Any, db_url: str) -> None:
    assert as_json(sdj("stats", "--database-url", db_url, "--json"))["queues"] == {}
    assert "no jobs" in ok(sdj("stats", "--database-url", db_url))


def test_schedules_declared_by_a_module(sdj: Any, db_url: str, app_module: Any) -> None:
    name = app_module(
        "import durable_jobs as jobs\n"
        "from durable_jobs.schedules import every\n"
        "queue = jobs.Queue()\n"
        "queue.register('cleanup', lambda: None)\n"
        "queue.schedule('cleanup', every(minutes=5), queue='ops')\n"
    )
    shown = as_json(sdj("schedules", f"{name}:queue", "--database-url", db_url, "--json"))
    [declared] = shown["declared"]
    assert (declared["name"], declared["spec"], declared["queue"]) == (
        "cleanup",
        "every 300s",
        "ops",
    )
    assert declared["next_run"].endswith(":00+00:00")
    table = ok(sdj("schedules", f"{name}:queue", "--database-url", db_url))
    assert "cleanup" in table and "every 300s" in table


def test_schedules_without_any(sdj: Any, db_url: str) -> None:
    assert ok(sdj("schedules", "--database-url", db_url)).strip() == "no schedules"
    shown = as_json(sdj("schedules", "--database-url", db_url, "--json"))
    assert shown == {"declared": [], "stored": []}


def test_schedules_show_what_a_scheduler_recorded(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    queue.register("digest", lambda: None)
    queue.schedule("digest", jobs.every(hours=1), queue="reports")
    scheduler = Scheduler(queue)  # no worker: run_once records the schedule's state
    first = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)
    assert scheduler.run_once(now=first) == 0  # first seen: nothing owed before now
    assert scheduler.run_once(now=first + timedelta(minutes=31)) == 1  # fired at 09:00

    shown = as_json(sdj("schedules", "--database-url", db_url, "--json"))
    assert shown["declared"] == []  # no module given: only the stored state
    [stored] = shown["stored"]
    updated_at = datetime.fromisoformat(stored.pop("updated_at"))
    assert stored == {
        "name": "digest",
        "spec": "every 3600s",
        "queue": "reports",
        "last_fire_at": "2030-01-01T09:00:00+00:00",
        "next_fire_at": "2030-01-01T10:00:00+00:00",
    }
    assert abs(updated_at - utcnow()) < timedelta(minutes=1)
    table = ok(sdj("schedules", "--database-url", db_url))
    assert "stored schedule state" in table and "digest" in table and "every 3600s" in table


def _fail(storage: Any, job_id: str) -> None:
    """Claim ``job_id`` (the next due job of its queue) and fail it permanently."""
    job = storage.get_job(job_id)
    [claimed] = storage.claim(job.queue, "test-worker", 1)
    assert claimed.id == job_id
    storage.fail(job_id, "boom", None)
