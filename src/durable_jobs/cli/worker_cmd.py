"""``sdj worker``: run the workers of a user's queue, in one process or several."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType
from typing import Annotated

import sqlalchemy as sa
import typer

from ..queue import Queue
from ..storage import SQLStorage
from ..storage.dialects import database_file
from ..storage.urls import masked
from ..worker import configure_logging
from .errors import CLIError
from .loader import load_queue

__all__ = ["parse_queues", "worker"]

log = logging.getLogger("durable_jobs.cli")

# A child that dies this soon after starting failed to start: restarting it would loop.
_MIN_UPTIME = 5.0


def worker(
    target: Annotated[
        str,
        typer.Argument(metavar="MODULE:QUEUE", help="Where your Queue is, e.g. app.tasks:queue."),
    ],
    queues: Annotated[
        str | None,
        typer.Option(help="Queues and concurrency: default=10,critical=5 (a bare name means 10)."),
    ] = None,
    scheduler: Annotated[
        bool, typer.Option("--scheduler", help="Also fire the queue's schedules.")
    ] = False,
    processes: Annotated[
        int, typer.Option(min=1, help="Worker processes to run (for CPU-bound handlers).")
    ] = 1,
    lock_timeout: Annotated[
        float, typer.Option(help="Seconds without heartbeat before a running job is taken back.")
    ] = 30.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="On SIGINT/SIGTERM, seconds to let running jobs finish before releasing them "
            "to other workers; a second signal stops at once.",
        ),
    ] = 30.0,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="SDJ_DATABASE_URL",
            show_envvar=True,
            help="Sets $SDJ_DATABASE_URL before your module is imported; a Queue() made "
            "without a storage uses it, one made with its own URL keeps that.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics "
            "(needs simple-durable-jobs[metrics]); with --processes N, process i serves "
            "PORT+i.",
        ),
    ] = None,
) -> None:
    """Run workers for the Queue defined in MODULE until SIGINT or SIGTERM, then drain."""
    _configure_logging()
    if database_url:
        _check_url(database_url)
        os.environ["SDJ_DATABASE_URL"] = database_url
    concurrency = parse_queues(queues)
    # Also in the parent of --processes, so that a mistake fails once, not in every child.
    queue = load_queue(target)
    try:
        runner = queue.worker(
            concurrency,
            scheduler=scheduler,
            lock_timeout=lock_timeout,
            shutdown_timeout=shutdown_timeout,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if processes > 1:
        argv = _child_argv(target, queues, scheduler, lock_timeout, shutdown_timeout)
        ports = _metrics_ports(metrics_port, processes)
        raise typer.Exit(_supervise([argv + extra for extra in ports]))
    _log_start(target, queue, dict(runner.concurrency), scheduler, lock_timeout, database_url)
    if metrics_port is not None:
        _serve_metrics(queue, metrics_port)
    runner.run()


def _check_url(url: str) -> None:
    """Refuse a malformed URL here, in one line: inside the user's module it would be a
    traceback from their ``Queue()``."""
    try:
        SQLStorage(url).close()  # parses and builds an engine; connects to nothing
    except ValueError as exc:  # its message masks the password
        raise CLIError(str(exc)) from None


def _serve_metrics(queue: Queue, port: int) -> None:
    try:
        from ..metrics import PrometheusMetrics
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    try:
        PrometheusMetrics(queue).serve(port)
    except OSError as exc:
        raise CLIError(f"cannot serve metrics on port {port}: {exc}") from None


def parse_queues(text: str | None) -> dict[str, int] | None:
    """``"default=10,critical=5"`` as a dict; None for the worker's default."""
    if text is None:
        return None
    parsed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = (s.strip() for s in item.partition("="))
        try:
            concurrency = int(number) if sep else 10
        except ValueError:
            concurrency = 0
        if not name or concurrency < 1:
            raise CLIError(f"bad --queues item {item!r}: expected NAME or NAME=CONCURRENCY (>= 1)")
        parsed[name] = concurrency
    if not parsed:
        raise CLIError("--queues names no queue")
    return parsed


def _configure_logging() -> None:
    configure_logging()
    if os.environ.get("SDJ_DEBUG", "0") not in ("", "0"):  # set by --debug
        logging.getLogger("durable_jobs").setLevel(logging.DEBUG)


def _log_start(
    target: str,
    queue: Queue,
    concurrency: dict[str, int],
    scheduler: bool,
    lock_timeout: float,
    database_url: str | None,
) -> None:
    storage = queue.storage
    url = storage.url
    log.info(
        "sdj worker %s (pid %d): database %s, queues %s, scheduler %s, lock timeout %gs, "
        "job types %s",
        target,
        os.getpid(),
        url,
        concurrency,
        "on" if scheduler else "off",
        lock_timeout,
        ", ".join(sorted(queue.job_types)) or "none",
    )
    if database_url and not _same_database(database_url, storage.engine.url):
        log.warning(
            "%s builds its Queue on %s; --database-url %s is not used by it",
            target,
            url,
            masked(database_url),
        )


def _same_database(given_url: str, used: sa.URL) -> bool:
    try:
        given = sa.make_url(given_url)
    except (sa.exc.ArgumentError, ValueError):
        return False  # cannot be the URL the queue parsed

    def key(url: sa.URL) -> tuple[str, str | None, int | None, str | None]:
        path = database_file(url)  # relative paths name the same file in other forms
        database = url.database if path is None else os.path.abspath(path)
        return (url.get_backend_name(), url.host, url.port, database)

    return key(given) == key(used)


# --- several processes ----------------------------------------------------------------


def _child_argv(
    target: str, queues: str | None, scheduler: bool, lock_timeout: float, shutdown_timeout: float
) -> list[str]:
    # Children get the database through the inherited $SDJ_DATABASE_URL (and --debug
    # through $SDJ_DEBUG).
    argv = [sys.executable, "-m", "durable_jobs.cli", "worker", target, "--processes", "1"]
    argv += ["--lock-timeout", repr(lock_timeout), "--shutdown-timeout", repr(shutdown_timeout)]
    if queues is not None:
        argv += ["--queues", queues]
    if scheduler:
        argv.append("--scheduler")
    return argv


def _metrics_ports(first: int | None, count: int) -> list[list[str]]:
    """Each child's metrics option: its own port, ``first + i`` (each process counts its
    own jobs, and processes cannot share a listening port). Checked free up front."""
    if first is None:
        return [[] for _ in range(count)]
    ports = range(first, first + count)
    if ports[-1] > 65535:
        raise CLIError(f"--metrics-port {first} with --processes {count} runs past port 65535")
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError as exc:
                raise CLIError(f"cannot serve metrics on port {port}: {exc}") from None
    return [["--metrics-port", str(port)] for port in ports]


def _supervise(argvs: list[list[str]]) -> int:
    """Run one worker process per argv, forward SIGINT/SIGTERM, restart any that die.

    Returns the first non-zero exit code of a child once all have stopped, else 0.
    """
    count = len(argvs)
    log.info("starting %d worker processes", count)
    children = [_Child(argv) for argv in argvs]
    stop: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping %d worker processes", signal.Signals(signum).name, count)
        stop.append(signum)
        for child in children:
            child.signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop:
            for i, child in enumerate(children):
                code = child.process.poll()
                if code is None or stop:
                    continue
                if child.uptime < _MIN_UPTIME:
                    log.error("worker process %d failed to start (exit %d)", child.pid, code)
                    forward(signal.SIGTERM, None)
                    break
                log.warning("worker process %d exited with %d; restarting it", child.pid, code)
                children[i] = _Child(argvs[i])
            time.sleep(0.2)
        codes = [child.process.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    statuses = [_exit_status(code, stop) for code in codes]
    return next((status for status in statuses if status), 0)


def _exit_status(code: int, forwarded: list[int]) -> int:
    """A child's status as a shell reports it; 0 if it died of a signal we forwarded.

    A child that gets the signal before it installed its handlers dies of it, having
    done no work: for the supervisor that is a clean stop.
    """
    if code >= 0:
        return code
    return 0 if -code in forwarded else 128 - code


class _Child:
    """One worker process and when it started."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv)
        self.pid = self.process.pid
        self.started = time.monotonic()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
