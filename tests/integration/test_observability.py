"""Logging, the instrumentation seam, Prometheus metrics and OpenTelemetry tracing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import durable_jobs as jobs
from durable_jobs.metrics import PrometheusMetrics
from durable_jobs.tracing import OpenTelemetryTracing
from tests.cli.conftest import sdj_command
from tests.helpers import undo_migration_6, wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}


def finished(queue: jobs.Queue, *ids: str) -> bool:
    found = [queue.get_job(i) for i in ids]
    return all(job is not None and job.status.is_terminal for job in found)


# --- logging ------------------------------------------------------------------------------


def test_one_line_per_outcome_with_structured_extras_and_none_per_poll(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    queue.register("ok", lambda: None, queue="mail")

    @queue.job(retries=1, backoff=jobs.constant(0), queue="mail")
    def flaky() -> None:
        raise ValueError("boom")

    caplog.set_level(logging.DEBUG, logger="durable_jobs")
    ok, bad = queue.enqueue("ok"), queue.enqueue(flaky)
    with queue.worker(["mail"], **FAST) as worker:
        wait_for(lambda: finished(queue, ok, bad))
        wait_for(lambda: sum(hasattr(r, "job_id") for r in caplog.records) == 3)
        lines = [r for r in caplog.records if hasattr(r, "job_id")]
        before = len(caplog.records)
        time.sleep(0.3)  # six polls of an idle worker
        assert caplog.records[before:] == []
    assert all(r.name == "durable_jobs" for r in lines)
    fields = [(r.job_id, r.job_type, r.queue, r.attempt, r.worker_id) for r in lines]  # type: ignore[attr-defined]
    assert sorted(fields) == sorted(
        [
            (ok, "ok", "mail", 1, worker.id),
            (bad, "flaky", "mail", 1, worker.id),
            (bad, "flaky", "mail", 2, worker.id),
        ]
    )
    [completed] = [r for r in lines if r.job_id == ok]  # type: ignore[attr-defined]
    assert isinstance(completed.duration, float) and completed.duration >= 0  # type: ignore[attr-defined]
    assert "completed" in completed.getMessage() and completed.levelno == logging.INFO
    # A retry is a warning; a permanent failure an error, with the handler's traceback.
    by_attempt = {r.attempt: r for r in lines if r.job_id == bad}  # type: ignore[attr-defined]
    retry, failure = by_attempt[1], by_attempt[2]
    assert retry.levelno == logging.WARNING and "retrying" in retry.getMessage()
    assert "ValueError: boom" in retry.getMessage()
    assert failure.levelno == logging.ERROR and "failed permanently" in failure.getMessage()
    assert "ValueError: boom" in failure.getMessage()
    assert failure.exc_text is not None or failure.exc_info is not None
    assert 'raise ValueError("boom")' in caplog.text


# --- the instrumentation seam -------------------------------------------------------------


class Recorder:
    """An instrument noting what it wraps, what it sees inside and how it ended."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def note(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    @contextlib.contextmanager
    def enqueue(self, jobs_: Sequence[jobs.Job]) -> Iterator[None]:
        for job in jobs_:
            job.meta = {"from": "recorder"}
        yield
        self.note("stored", tuple(j.id for j in jobs_))

    @contextlib.contextmanager
    def job_run(self, job: jobs.Job) -> Iterator[None]:
        self.note("run", job.type, jobs.current_job() is job)
        try:
            yield
        except Exception as exc:
            self.note("run failed", job.type, type(exc).__name__)
            raise
        self.note("run done", job.type)

    @contextlib.contextmanager
    def step_run(self, job: jobs.Job, name: str, index: int) -> Iterator[None]:
        self.note("step", job.type, name, index)
        yield
        self.note("step done", job.type, name, index)


def test_instrument_wraps_enqueues_runs_and_steps(queue: jobs.Queue) -> None:
    recorder = queue.instrument(Recorder())
    queue.register("double", lambda n: n * 2)

    @queue.job()
    def workflow(n: int) -> int:
        a: int = jobs.call("double", n)
        return a + jobs.call("double", a)

    @queue.job()
    async def async_workflow(n: int) -> int:
        a: int = await jobs.call_async("double", n)
        return a

    @queue.job(retries=0)
    def broken() -> None:
        raise KeyError("k")

    ids = [queue.enqueue(workflow, 1)]
    ids += queue.enqueue_many([(async_workflow, 2), (broken, None)])
    assert recorder.calls == [("stored", (ids[0],)), ("stored", tuple(ids[1:]))]
    with queue.worker({"default": 1}, **FAST):
        wait_for(lambda: finished(queue, *ids))
    calls = recorder.calls[2:]
    assert calls[:6] == [
        ("run", "workflow", True),
        ("step", "workflow", "double", 0),
        ("step done", "workflow", "double", 0),
        ("step", "workflow", "double", 1),
        ("step done", "workflow", "double", 1),
        ("run done", "workflow"),
    ]
    assert sorted(calls[6:]) == sorted(
        [
            ("run", "async_workflow", True),
            ("step", "async_workflow", "double", 0),
            ("step done", "async_workflow", "double", 0),
            ("run done", "async_workflow"),
            ("run", "broken", True),
            ("run failed", "broken", "KeyError"),
        ]
    )
    # What an instrument adds to job.meta at enqueue is stored with the job.
    stored = queue.get_job(ids[0])
    assert stored is not None and stored.meta == {"from": "recorder"}


def test_meta_round_trips_and_migration_3_adds_it_to_older_databases(
    storage: jobs.SQLStorage,
) -> None:
    with storage.engine.begin() as conn:
        undo_migration_6(conn)
        conn.exec_driver_sql("ALTER TABLE sdj_jobs DROP COLUMN meta")
        # Migration 4's and 5's.
        for column in ("fence", "lock_expires_at", "finished_at", "finished_by", "traceback"):
            conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
        conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 3")
        conn.execute(
            sa.text(
                "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
                " max_retries, run_at, created_at, updated_at) VALUES"
                " ('old', 't', 'null', 'default', 0, 'pending', 0, 3, :now, :now, :now)"
            ),
            {"now": storage.dialect.time_param(datetime.now(UTC))},
        )
    assert storage.schema_version() == 2
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    old = storage.get_job("old")
    assert old is not None and old.meta == {}
    meta = {"trace": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, "n": [1, 2]}
    one = storage.enqueue(jobs.Job(type="t", meta=meta))
    many = storage.enqueue_many([jobs.Job(type="t", meta=meta), jobs.Job(type="t")])  # COPY
    assert [j.meta for j in map(storage.get_job, [one, *many]) if j] == [meta, meta, {}]
    [claimed, *_] = storage.claim("default", "w", 1)
    assert claimed.id == "old" and claimed.meta == {}
    assert [j.meta for j in storage.claim("default", "w", 2)] == [meta, meta]


class Broken:
    """Fails everywhere it can, and tries to swallow the handler's errors."""

    def job_run(self, job: jobs.Job) -> contextlib.AbstractContextManager[None]:
        if job.type == "ok":
            raise RuntimeError("instrument broke on enter")
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> bool:
        raise RuntimeError("instrument broke on exit")

    def enqueue(self, jobs_: Sequence[jobs.Job]) -> contextlib.AbstractContextManager[None]:
        return Swallowing()


class Swallowing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> bool:
        return True  # would suppress an error: instruments observe, never decide


def test_failing_instruments_are_logged_and_never_change_outcomes(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    queue.instrument(Broken())
    queue.register("ok", lambda: "fine")

    @queue.job(retries=0)
    def bad() -> None:
        raise ValueError("handler error")

    caplog.set_level(logging.ERROR, logger="durable_jobs")
    with pytest.raises(TypeError):
        queue.enqueue("ok", object())  # the enqueue error still reaches the caller
    ok, failing = queue.enqueue("ok"), queue.enqueue(bad)
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, ok, failing))
    done, failed = queue.get_job(ok), queue.get_job(failing)
    assert done is not None and done.status == jobs.JobStatus.COMPLETED and done.result == b'"fine"'
    assert failed is not None and failed.status == jobs.JobStatus.FAILED
    assert failed.last_error == "ValueError: handler error"
    logged = [r.getMessage() for r in caplog.records]
    assert any("failed on enter" in m for m in logged)
    assert any("failed on exit" in m for m in logged)


def test_an_object_without_any_seam_is_not_an_instrument(queue: jobs.Queue) -> None:
    with pytest.raises(TypeError, match="not an instrument"):
        queue.instrument(object())


# --- OpenTelemetry tracing ---------------------------------------------------------------


@pytest.fixture
def spans(queue: jobs.Queue) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """A tracer for the test's own spans and the exporter receiving every span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OpenTelemetryTracing(queue, tracer_provider=provider)
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_job_and_step_spans_join_the_trace_of_the_enqueuing_code(
    queue: jobs.Queue, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans
    queue.register("charge", lambda amount: f"receipt-{amount}")

    @queue.job()
    def ship(order: int) -> str:
        return f"shipped {order} with " + jobs.call("charge", order)

    @queue.job()
    def checkout(order: int) -> str:
        receipt: str = jobs.call("charge", order)
        shipped: str = jobs.call("ship", order)  # a step that makes a call of its own
        return f"{receipt}; {shipped}"

    with tracer.start_as_current_span("POST /orders") as request:
        job_id = queue.enqueue(checkout, 7)
    untraced = queue.enqueue(checkout, 8)
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id, untraced))

    context = request.get_span_context()
    stored = queue.get_job(job_id)
    assert stored is not None and stored.meta is not None
    assert stored.meta["trace"]["traceparent"].startswith(f"00-{context.trace_id:032x}-")
    runs = {s.attributes["messaging.message.id"]: s for s in named(exporter, "run checkout")}
    run = runs[job_id]
    assert run.kind == trace.SpanKind.CONSUMER
    assert run.context.trace_id == context.trace_id
    assert run.parent is not None and run.parent.span_id == context.span_id
    assert run.attributes is not None and run.attributes["durable_jobs.job.type"] == "checkout"
    # The job that was enqueued outside any span starts a trace of its own.
    other = runs[untraced]
    assert other.parent is None and other.context.trace_id != context.trace_id

    in_trace = [s for s in exporter.get_finished_spans() if s.context.trace_id == context.trace_id]
    by_id = {s.context.span_id: s for s in in_trace}

    def parent_name(span: ReadableSpan) -> str:
        assert span.parent is not None
        return by_id[span.parent.span_id].name

    steps = sorted((s.name, parent_name(s)) for s in in_trace if s.name.startswith("call "))
    assert steps == [
        ("call charge", "call ship"),
        ("call charge", "run checkout"),
        ("call ship", "run checkout"),
    ]


def test_each_run_of_a_retried_job_is_a_span_under_the_same_parent(
    queue: jobs.Queue, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans

    @queue.job(retries=1, backoff=jobs.constant(0))
    async def flaky() -> str:
        if jobs.current_job().attempt == 1:
            raise ValueError("first run fails")
        return await jobs.call_async("step")

    @queue.job()
    async def step() -> str:
        return "ok"

    async def enqueue_in_a_request() -> tuple[str, trace.SpanContext]:
        with tracer.start_as_current_span("request") as request:
            job_id = await queue.enqueue_async(flaky)
        return job_id, request.get_span_context()

    job_id, context = asyncio.run(enqueue_in_a_request())
    with queue.worker(**FAST):
        wait_for(lambda: finished(queue, job_id))
    runs = sorted(named(exporter, "run flaky"), key=lambda s: s.start_time or 0)
    assert [s.attributes and s.attributes["durable_jobs.job.attempt"] for s in runs] == [1, 2]
    assert all(s.parent and s.parent.span_id == context.span_id for s in runs)
    assert [s.status.status_code for s in runs] == [
        trace.StatusCode.ERROR,
        trace.StatusCode.UNSET,
    ]
    [call] = named(exporter, "call step")
    assert call.parent is not None and call.parent.span_id == runs[1].context.span_id


# --- Prometheus metrics -------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics(queue: jobs.Queue) -> Iterator[tuple[PrometheusMetrics, int]]:
    served = PrometheusMetrics(queue, registry=CollectorRegistry())
    port = served.serve(0, addr="127.0.0.1")
    yield served, port
    served.close()


def test_metrics_endpoint_after_a_known_workload(
    queue: jobs.Queue, metrics: tuple[PrometheusMetrics, int]
) -> None:
    _, port = metrics
    release = threading.Event()
    queue.register("ok", lambda: None)
    queue.register("block", lambda: release.wait(10))

    @queue.job(retries=1, backoff=jobs.constant(0))
    def flaky() -> None:
        raise ValueError("boom")

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    ids = queue.enqueue_many([("ok", None)] * 3 + [("flaky", None), ("block", None)])
    queue.enqueue_many([("ok", None, {"queue": "idle", "at": hour_ago})] * 2)  # never served
    queue.enqueue("ok", delay=3600)  # not due: no part of the depth
    before = scrape(port)
    assert sample(before, "sdj_queue_depth", queue="default") == 5
    assert sample(before, "sdj_queue_depth", queue="idle") == 2
    age = sample(before, "sdj_queue_oldest_due_age_seconds", queue="idle")
    assert age is not None and 3600 <= age < 3700

    def labels(job_type: str, queue: str = "default") -> dict[str, str]:
        return {"job_type": job_type, "queue": queue}

    with queue.worker({"default": 4}, **FAST):
        running = wait_for(
            lambda: (
                (s := scrape(port))
                and sample(s, "sdj_jobs_completed_total", **labels("ok")) == 3
                and sample(s, "sdj_jobs_failed_total", **labels("flaky")) == 1
                and s
            )
        )
        assert sample(running, "sdj_jobs_in_progress", **labels("block")) == 1
        release.set()
        wait_for(lambda: finished(queue, *ids))
        after = wait_for(
            lambda: (
                (s := scrape(port))
                and sample(s, "sdj_jobs_completed_total", **labels("block")) == 1
                and s
            )
        )
    expected = {
        ("sdj_jobs_enqueued_total", "ok", "default"): 4,
        ("sdj_jobs_enqueued_total", "ok", "idle"): 2,
        ("sdj_jobs_enqueued_total", "flaky", "default"): 1,
        ("sdj_jobs_enqueued_total", "block", "default"): 1,
        ("sdj_jobs_started_total", "ok", "default"): 3,
        ("sdj_jobs_started_total", "flaky", "default"): 2,
        ("sdj_jobs_started_total", "block", "default"): 1,
        ("sdj_jobs_completed_total", "ok", "default"): 3,
        ("sdj_jobs_completed_total", "block", "default"): 1,
        ("sdj_jobs_completed_total", "flaky", "default"): None,
        ("sdj_jobs_retried_total", "flaky", "default"): 1,
        ("sdj_jobs_failed_total", "flaky", "default"): 1,
        ("sdj_jobs_failed_total", "ok", "default"): None,
        ("sdj_job_duration_seconds_count", "ok", "default"): 3,
        ("sdj_job_duration_seconds_count", "flaky", "default"): 2,
        ("sdj_job_duration_seconds_count", "block", "default"): 1,
        ("sdj_jobs_in_progress", "ok", "default"): 0,
        ("sdj_jobs_in_progress", "block", "default"): 0,
    }
    got = {key: sample(after, key[0], **labels(key[1], key[2])) for key in expected}
    assert got == expected
    assert sample(after, "sdj_queue_depth", queue="idle") == 2
    # A queue that emptied reports 0 instead of vanishing from the scrape.
    assert sample(after, "sdj_queue_depth", queue="default") == 0
    assert sample(after, "sdj_queue_oldest_due_age_seconds", queue="default") == 0
    block_sum = sample(after, "sdj_job_duration_seconds_sum", **labels("block"))
    assert block_sum is not None and block_sum > 0


def test_metrics_count_waiting_jobs_per_queue(
    queue: jobs.Queue, metrics: tuple[PrometheusMetrics, int]
) -> None:
    _, port = metrics

    @queue.job(queue="nightly")
    def nap() -> None:
        jobs.sleep(3600)

    ids = [queue.enqueue(nap) for _ in range(3)]
    assert sample(scrape(port), "sdj_jobs_waiting", queue="nightly") in (None, 0)
    with queue.worker({"nightly": 3}, **FAST):
        wait_for(lambda: all(queue.get_job(i).status is jobs.JobStatus.WAITING for i in ids))
    scraped = scrape(port)
    assert sample(scraped, "sdj_jobs_waiting", queue="nightly") == 3
    assert sample(scraped, "sdj_queue_depth", queue="nightly") == 0
    assert queue.storage.admin().delete(ids[0]) is not None
    assert sample(scrape(port), "sdj_jobs_waiting", queue="nightly") == 2


def test_metrics_count_live_workers_from_the_registry(
    queue: jobs.Queue, metrics: tuple[PrometheusMetrics, int]
) -> None:
    _, port = metrics
    assert sample(scrape(port), "sdj_workers_live") == 0
    with queue.worker(**FAST), queue.worker(["other"], **FAST):
        # Each worker records itself at start and on every heartbeat.
        wait_for(lambda: sample(scrape(port), "sdj_workers_live") == 2)
        storage = queue.storage
        assert isinstance(storage, jobs.SQLStorage)
        # A worker silent for longer than the live window no longer counts.
        storage.heartbeat_worker("gone", host="h", pid=1, queues=["x"], types=[])
        with storage.engine.begin() as conn:
            old = storage.dialect.time_param(datetime.now(UTC) - timedelta(minutes=5))
            conn.execute(
                sa.text("UPDATE sdj_workers SET heartbeat_at = :old WHERE id = 'gone'"),
                {"old": old},
            )
        assert sample(scrape(port), "sdj_workers_live") == 2
    # Stopped workers remove their entries.
    assert sample(scrape(port), "sdj_workers_live") == 0


def test_metrics_close_stops_the_server(
    queue: jobs.Queue, metrics: tuple[PrometheusMetrics, int]
) -> None:
    served, port = metrics
    queue.enqueue("t")
    assert sample(scrape(port), "sdj_queue_depth", queue="default") == 1
    served.close()
    with pytest.raises(OSError):
        scrape(port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_sdj_worker_serves_metrics(tmp_path: Path, db_url: str, queue: jobs.Queue) -> None:
    (tmp_path / "tasks.py").write_text(
        "import durable_jobs as jobs\n\nqueue = jobs.Queue()\nqueue.register('t', lambda: None)\n"
    )
    port = free_port()
    command = [*sdj_command(), "worker", "tasks:queue", "--metrics-port", str(port)]
    proc = subprocess.Popen(
        [*command, "--database-url", db_url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ids = queue.enqueue_many([("t", None)] * 3)
        wait_for(lambda: finished(queue, *ids), timeout=30)

        def completed() -> float | None:
            try:
                found = sample(
                    scrape(port), "sdj_jobs_completed_total", job_type="t", queue="default"
                )
            except OSError:
                return None  # not listening yet
            return found

        assert wait_for(lambda: completed() == 3, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
