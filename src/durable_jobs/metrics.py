"""Prometheus metrics for a queue: ``pip install 'simple-durable-jobs[metrics]'``.

::

    from durable_jobs.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(queue)   # on prometheus_client's default registry
    metrics.serve(9100)                  # http://host:9100/metrics

Counters, the duration histogram and the in-progress gauge count what this process's
``Queue`` object does (sum them across processes in PromQL). The queue depth and
oldest-due-age and waiting gauges are read from the database on each scrape, so any one process
reports them for the whole database.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        make_wsgi_app,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "durable_jobs.metrics needs prometheus-client: pip install 'simple-durable-jobs[metrics]'"
    ) from exc

from .explain import LIVE_WORKER_WINDOW
from .job import Job, utcnow

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["PrometheusMetrics"]

log = logging.getLogger("durable_jobs")

_LABELS = ("job_type", "queue")
#: From 5 ms to 10 min: background jobs range from quick calls to long batches.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)


class PrometheusMetrics:
    """Counts enqueues, runs and outcomes of ``queue`` and serves them to Prometheus.

    Registers itself on the queue as an instrument (runs) and as hooks (committed
    enqueues and outcomes). ``registry`` defaults to prometheus_client's global one, so
    an application's existing ``/metrics`` endpoint includes these metrics.

    Metrics, labelled by ``job_type`` and ``queue``: ``sdj_jobs_enqueued_total``,
    ``sdj_jobs_started_total``, ``sdj_jobs_completed_total``, ``sdj_jobs_failed_total``
    (permanently), ``sdj_jobs_retried_total``, ``sdj_job_duration_seconds`` (every
    run, whatever its outcome) and ``sdj_jobs_in_progress``; by ``queue`` alone,
    read from the database: ``sdj_queue_depth`` (jobs due now) and
    ``sdj_queue_oldest_due_age_seconds`` and ``sdj_jobs_waiting`` (suspended jobs);
    and unlabelled, from the worker registry: ``sdj_workers_live``.
    """

    def __init__(self, queue: Queue, registry: CollectorRegistry | None = None) -> None:
        self.queue = queue
        self.registry = REGISTRY if registry is None else registry
        r = self.registry
        self.enqueued = Counter("sdj_jobs_enqueued", "Jobs enqueued.", _LABELS, registry=r)
        self.started = Counter("sdj_jobs_started", "Job runs started.", _LABELS, registry=r)
        self.completed = Counter("sdj_jobs_completed", "Jobs completed.", _LABELS, registry=r)
        self.failed = Counter("sdj_jobs_failed", "Jobs failed permanently.", _LABELS, registry=r)
        self.retried = Counter(
            "sdj_jobs_retried", "Failed runs scheduled to retry.", _LABELS, registry=r
        )
        self.duration = Histogram(
            "sdj_job_duration_seconds",
            "Wall time of job runs, whatever their outcome.",
            _LABELS,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.in_progress = Gauge(
            "sdj_jobs_in_progress", "Job runs in progress.", _LABELS, registry=r
        )
        r.register(_DueJobsCollector(queue))
        r.register(_LiveWorkersCollector(queue))
        self._servers: list[tuple[WSGIServer, threading.Thread]] = []
        queue.on_job_complete(self._on_complete)
        queue.on_job_fail(self._on_fail)
        queue.on_retry(self._on_retry)
        queue.hooks.on_enqueued(self._on_enqueued)
        queue.instrument(self)

    # -- the instrument ------------------------------------------------------------------

    def _on_enqueued(self, jobs: Sequence[Job]) -> None:
        # Once committed, like JobEnqueued: never for a failed write or a caller's rollback.
        for (job_type, queue), n in collections.Counter((j.type, j.queue) for j in jobs).items():
            self.enqueued.labels(job_type, queue).inc(n)

    @contextlib.contextmanager
    def job_run(self, job: Job) -> Iterator[None]:
        """Count a run, keep it in the in-progress gauge and time it."""
        labels = (job.type, job.queue)
        self.started.labels(*labels).inc()
        running = self.in_progress.labels(*labels)
        running.inc()
        start = time.perf_counter()
        try:
            yield
        finally:
            running.dec()
            self.duration.labels(*labels).observe(time.perf_counter() - start)

    def _on_complete(self, job: Job) -> None:
        self.completed.labels(job.type, job.queue).inc()

    def _on_fail(self, job: Job, error: BaseException) -> None:
        self.failed.labels(job.type, job.queue).inc()

    def _on_retry(self, job: Job, error: BaseException) -> None:
        self.retried.labels(job.type, job.queue).inc()

    # -- serving -------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve the registry at ``http://addr:port/metrics`` from a daemon thread.

        Returns the port listened on (the one the OS chose when ``port`` is 0).
        """
        server = make_server(
            addr, port, make_wsgi_app(self.registry), _server_class(addr), _QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name="sdj-metrics", daemon=True)
        thread.start()
        self._servers.append((server, thread))
        log.info("serving Prometheus metrics on %s:%d", addr, server.server_port)
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP servers started by :meth:`serve` (the metrics keep counting)."""
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(5)


class _DueJobsCollector(Collector):
    """Reads the due jobs per queue from the database at each scrape."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        # Queues seen before report 0 once empty rather than vanishing from the scrape.
        self._seen: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names without collect() querying the database.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        depth, age, waiting = self._families()
        storage = self._queue.storage
        read = getattr(storage, "queue_depths", None)
        read_waiting = getattr(storage, "waiting_counts", None)
        if read is None or read_waiting is None:  # a storage without the queries
            return []
        try:
            depths = read()
            waiting_by_queue = read_waiting()
        except Exception as exc:
            log.warning("reading queue depths for metrics failed: %s", exc)
            return []
        now = utcnow()
        self._seen.update(d.queue for d in depths)
        self._seen.update(waiting_by_queue)
        by_queue = {d.queue: d for d in depths}
        for name in sorted(self._seen):
            d = by_queue.get(name)
            depth.add_metric([name], d.due if d else 0)
            oldest = d.oldest_run_at if d else None
            age.add_metric([name], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            waiting.add_metric([name], waiting_by_queue.get(name, 0))
        return [depth, age, waiting]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "sdj_queue_depth", "Jobs due to run now (from the database).", labels=["queue"]
            ),
            GaugeMetricFamily(
                "sdj_queue_oldest_due_age_seconds",
                "How long the longest-waiting due job has waited (from the database).",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "sdj_jobs_waiting",
                "Jobs suspended by a sleep, a fan-out or a signal wait (from the database).",
                labels=["queue"],
            ),
        ]


class _LiveWorkersCollector(Collector):
    """Reads the worker registry at each scrape: workers with a recent heartbeat."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        try:
            live = self._queue.storage.live_workers(LIVE_WORKER_WINDOW)
        except Exception as exc:
            log.warning("reading the worker registry for metrics failed: %s", exc)
            return []
        family = self._family()
        family.add_metric([], len(live))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "sdj_workers_live",
            f"Worker processes that heartbeated in the last {LIVE_WORKER_WINDOW.seconds} s"
            " (from the database).",
        )


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood stderr with access lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_class(addr: str) -> type[WSGIServer]:
    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a stuck scrape must not keep the process alive
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    return Server
