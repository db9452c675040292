"""The torture run: worker processes, a producer, a chaos driver, and the checks.

``run(backend, profile)`` starts worker processes of ``tests/torture/app.py`` on a fresh
database (a private PostgreSQL or MariaDB server, or a SQLite file), enqueues a mix of
jobs while SIGKILLing and freezing workers (and, on a server, crashing and restarting it
and killing every client connection; on SQLite, filling its disk), waits until every job
is finished, and then checks what the database and the side tables say happened
(``verify``). It returns a ``Report`` whose
``line()`` is the summary; any broken guarantee raises ``TortureFailure``. Meanwhile the
driver also cancels jobs, pauses and resumes jobs, and pauses one of the two queues for a
while (job control), noting each call with the times it was made and returned.

Database triggers record what the checks need and the workers cannot be trusted to
report: every status change of a job, and every change of its pause request
(``paused_from``), (``torture_transitions``) and every checkpoint write with the attempt
that wrote it and the job's status as the write saw it (``torture_saves``), each in the
same transaction as the change itself.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs import codec
from tests.torture import app
from tests.torture.mysql_instance import MySQLInstance, mysql_instance
from tests.torture.pg_instance import PostgresInstance, postgres_instance

ROOT = Path(__file__).resolve().parents[2]

CONCURRENCY = 4  # slots per worker process
CLAIM_AHEAD = 16  # a worker holds at most this many times its concurrency (dispatcher.py)
LOCK_TIMEOUT = 4.0  # seconds; heartbeats every 0.8 s
DISK_FULL_FOR = 1.5  # seconds the SQLite file system stays full
DISK_SIZE = "128m"  # the tmpfs that holds a SQLite run's database
WORKERS = {"sqlite": 3, "postgresql": 4, "mysql": 4}  # the backends, in run order
KINDS = {  # kind -> share of the jobs (children of fan-outs come on top)
    "plain": 12,
    "plain_async": 10,
    "flaky": 10,
    "refuse": 7,
    "later": 8,
    "later_always": 4,
    "exhaust": 5,
    "delayed": 10,
    "workflow": 12,
    "workflow_async": 8,
    "napper": 5,
    "fanout": 5,
    "signalled": 4,
    "looper": 4,
    "looper_async": 3,
    "capped": 5,
    "keyed": 4,
}
SIDE_SHARE = 0.25  # of the jobs the producer enqueues, those that go to the side queue
# The driver sends each signalled job its signal (its n, then a decoy) this long after
# enqueueing it, drawn uniformly: before it waits, or while it waits.
SIGNAL_AFTER = (0.0, 3.0)
# What a run of a workflow fails with when the database goes away under it (the
# checkpoint read or write of jobs.call): legitimate, retried, and only on a server
# (psycopg's AdminShutdown; OperationalError and InterfaceError of psycopg and PyMySQL).
OUTAGE_ERRORS = ("OperationalError", "AdminShutdown", "InterfaceError")
THREAD_DIED = "Exception in thread"
REJECTED = "rejected: the worker lost its lock"
# A worker's warning that a checkpoint write failed and is being retried (durable.py).
SAVE_RETRIED = re.compile(r"saving checkpoint (\d+) of job (\S+) failed \(")
DISK_FULL = "database or disk is full"  # SQLite's message for SQLITE_FULL

# Job control. The driver acts every CONTROL_EVERY seconds during the chaos, drawing one
# action by these weights: cancel a looper running on a live worker, a job not running
# (pending, retrying or paused), a fan-out parent with its children, a child on its own,
# or any job at all (finished ones included); or pause a job that is pending or
# retrying, waiting, or running, resumed after PAUSE_FOR seconds.
CONTROL_EVERY = (0.2, 0.5)
CONTROLS = {
    "cancel running": 3,
    "cancel idle": 2,
    "cancel fan-out": 2,
    "cancel child": 1,
    "cancel any": 1,
    "pause idle": 3,
    "pause waiting": 1,
    "pause running": 1,
}
PAUSE_FOR = (0.5, 2.0)
# The side queue is paused at this fraction of the chaos, for QUEUE_PAUSE_FOR seconds,
# and SIDE_HELD plain jobs are enqueued on it meanwhile (they must wait for the resume).
QUEUE_PAUSE_AT = 0.2
QUEUE_PAUSE_FOR = 3.0
SIDE_HELD = 6
# The database's clock against the driver's (one host, one clock): SQLite's 'now' is
# whole milliseconds, truncated.
EPS = 0.005
# A claim's read of the queue pauses happens after the time ``began`` the observer
# records: the transaction's start on PostgreSQL, the claiming statement's (one
# statement: SQLite serialises writers) on SQLite. A MySQL claim reads in a SELECT before
# its UPDATE, whose statement start is all a trigger can tell: this much earlier, then.
CLAIM_READ_SLACK = {"mysql": 1.5}
# How long after a cancel committed a loop step of another process may still run before
# it notices (workers ask every 0.5 s; the machine is busy); not counted when its worker
# was frozen or an outage came in between. Of NOTICE_AMONG cancels of running loopers,
# one at least meets a step with a second to go, and notices.
NOTICE_LIMIT = 5.0
NOTICE_AMONG = 5


# A private database server the driver restarts: PostgreSQL's or MariaDB's.
Server = PostgresInstance | MySQLInstance

Problem = Callable[[str], None]  # collects the broken guarantees the checks find


class TortureFailure(AssertionError):
    """A guarantee did not hold (or the run could not finish)."""


@dataclass(frozen=True)
class Profile:
    """How big and how long a run is."""

    name: str
    jobs: int
    produce_for: float  # seconds over which the jobs are enqueued
    chaos_for: float  # seconds of chaos at least (longer until min_kills)
    min_kills: int
    kill_every: tuple[float, float]  # seconds between kills, drawn uniformly
    pauses: int  # workers frozen for longer than the lock timeout
    drain_timeout: float  # seconds allowed after the chaos to finish every job


SHORT = Profile("short", 600, 10, 15, 5, (1.5, 2.5), 1, 120)
LONG = Profile("long", 5000, 70, 80, 20, (2.0, 3.5), 2, 300)
PROFILES = {"short": SHORT, "long": LONG}


@dataclass
class Report:
    """The figures of a run; ``line()`` is the summary the command prints."""

    backend: str
    profile: str
    seed: int
    jobs: int = 0
    kills: int = 0
    pauses: int = 0
    restarts: int = 0
    connection_kills: int = 0
    connections_killed: int = 0
    disk_fulls: int = 0
    executions: int = 0
    re_executions: int = 0
    reaped_runs: int = 0
    fenced: int = 0
    steps_saved: int = 0
    step_reruns_before_save: int = 0
    step_reruns_after_save: int = 0
    double_completions: int = 0
    outage_failures: int = 0
    storage_errors: int = 0
    children: int = 0
    suspensions: int = 0
    wake_ups: int = 0
    resumed_runs: int = 0
    signals: int = 0
    cancels: int = 0  # cancel calls of the driver
    cancelled: int = 0  # jobs that ended cancelled
    cascaded: int = 0  # ... with an ancestor's cancel
    cancelled_running: int = 0  # runs a cancel ended
    late_steps: int = 0  # steps begun after their job's cancel committed
    notices: int = 0  # loop steps that noticed their cancel
    notice_max: float = 0.0  # seconds from a cancel's commit to its notice, at most
    job_pauses: int = 0  # pause calls that paused a job
    held: int = 0  # times a job became paused
    queue_pauses: int = 0
    side_held: int = 0  # jobs enqueued on the paused queue, run after its resume
    in_flight_claims: int = 0  # claims of the paused queue already under way at its pause
    in_flight_began: float = -math.inf  # ... the latest start of one, from the pause
    capped_runs: int = 0  # runs of the capped kinds (app.CAPS)
    most_running: dict[str, int] = field(default_factory=dict)  # kind -> most at once
    outlived: int = 0  # capped executions that went on after a take-back or a cancel
    seconds: float = 0.0

    def _began(self) -> str:
        if not self.in_flight_claims:
            return ""
        return f", begun by {self.in_flight_began:+.3f} s"

    def _most(self) -> str:
        return ", ".join(
            f"{self.most_running.get(kind, 0)}/{cap} {kind}" for kind, cap in app.CAPS.items()
        )

    def line(self) -> str:
        return (
            f"torture: {self.jobs} jobs, {self.kills} kills, {self.restarts} restarts, "
            f"{self.re_executions} re-executions, {self.connection_kills} connection kills "
            f"({self.connections_killed} connections), {self.disk_fulls} disk-full episodes, "
            f"{self.pauses} frozen workers, "
            f"{self.executions} executions, {self.reaped_runs} runs taken back, "
            f"{self.fenced} fenced outcomes, {self.steps_saved} checkpointed steps "
            f"({self.step_reruns_before_save} re-run before their checkpoint, "
            f"{self.step_reruns_after_save} after), {self.suspensions} suspensions "
            f"({self.wake_ups} woken, {self.resumed_runs} resumed runs, {self.children} "
            f"children, {self.signals} signals), {self.cancels} cancels ({self.cancelled} "
            f"jobs cancelled: {self.cascaded} with an ancestor, {self.cancelled_running} "
            f"running; {self.late_steps} steps begun after, {self.notices} noticed within "
            f"{self.notice_max:.2f} s), {self.job_pauses} job pauses ({self.held} held), "
            f"{self.queue_pauses} queue pauses ({self.side_held} jobs held back, "
            f"{self.in_flight_claims} claims in flight{self._began()}), "
            f"{self.capped_runs} capped runs (at most {self._most()} at once, "
            f"{self.outlived} outlived their slot), "
            f"{self.outage_failures} runs failed by the outage, {self.storage_errors} "
            "storage errors survived, "
            f"{self.double_completions} double completions [{self.backend}, {self.profile}, "
            f"seed {self.seed}, {self.seconds:.0f} s]"
        )


# -- the database -------------------------------------------------------------------------

_SQLITE_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL, old_status TEXT, new_status TEXT, old_attempt INTEGER,
        new_attempt INTEGER, locked_by TEXT, error TEXT, at REAL, old_held TEXT,
        new_held TEXT, began REAL, txn TEXT)""",
    # 'now' is the same throughout one statement: the claim's, which read the pauses.
    """CREATE TRIGGER torture_transition AFTER UPDATE OF status, paused_from ON sdj_jobs
        WHEN OLD.status IS NOT NEW.status OR OLD.paused_from IS NOT NEW.paused_from BEGIN
        INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
            new_attempt, locked_by, error, at, old_held, new_held, began)
        VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
            substr(NEW.last_error, 1, 80), (julianday('now') - 2440587.5) * 86400.0,
            OLD.paused_from, NEW.paused_from, (julianday('now') - 2440587.5) * 86400.0);
        END""",
    """CREATE TABLE torture_saves (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT,
        scope TEXT, call_index INTEGER, attempt INTEGER, locked_by TEXT, op TEXT, at REAL,
        resumed INTEGER, status TEXT)""",
    """CREATE TRIGGER torture_save_insert AFTER INSERT ON sdj_checkpoints BEGIN
        INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at,
                resumed, status)
            SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, 'insert',
                (julianday('now') - 2440587.5) * 86400.0, wait_until IS NOT NULL, status
            FROM sdj_jobs WHERE id = NEW.job_id;
        END""",
    """CREATE TRIGGER torture_save_update AFTER UPDATE ON sdj_checkpoints BEGIN
        INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at,
                resumed, status)
            SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, 'update',
                (julianday('now') - 2440587.5) * 86400.0, wait_until IS NOT NULL, status
            FROM sdj_jobs WHERE id = NEW.job_id;
        END""",
)

_POSTGRES_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL,
        old_status TEXT, new_status TEXT, old_attempt INTEGER, new_attempt INTEGER,
        locked_by TEXT, error TEXT, at DOUBLE PRECISION, old_held TEXT, new_held TEXT,
        began DOUBLE PRECISION, txn TEXT)""",
    # began: the transaction's start, before any of its reads (read committed: a
    # snapshot per statement). txn: which transaction made the change.
    """CREATE FUNCTION torture_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
                new_attempt, locked_by, error, at, old_held, new_held, began, txn)
            VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
                left(NEW.last_error, 80), extract(epoch FROM clock_timestamp()),
                OLD.paused_from, NEW.paused_from,
                extract(epoch FROM transaction_timestamp()), txid_current()::text);
            RETURN NULL;
        END $$""",
    """CREATE TRIGGER torture_transition AFTER UPDATE ON sdj_jobs FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status
              OR OLD.paused_from IS DISTINCT FROM NEW.paused_from)
        EXECUTE FUNCTION torture_transition()""",
    """CREATE TABLE torture_saves (seq BIGSERIAL PRIMARY KEY, job_id TEXT, scope TEXT,
        call_index INTEGER, attempt INTEGER, locked_by TEXT, op TEXT, at DOUBLE PRECISION,
        resumed INTEGER, status TEXT)""",
    """CREATE FUNCTION torture_save() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at,
                    resumed, status)
                SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, lower(TG_OP),
                    extract(epoch FROM clock_timestamp()), (wait_until IS NOT NULL)::int,
                    status
                FROM sdj_jobs WHERE id = NEW.job_id;
            RETURN NULL;
        END $$""",
    """CREATE TRIGGER torture_save AFTER INSERT OR UPDATE ON sdj_checkpoints FOR EACH ROW
        EXECUTE FUNCTION torture_save()""",
)

# MySQL/MariaDB: the same observers. A trigger has one event, so the checkpoint writes
# take two; SYSDATE(6) is the time of the write (NOW(6) would be the statement's start).
# ``<=>`` is IS NOT DISTINCT FROM. (No "%" in these: the driver formats statements.)
# In a trigger, NOW(6) is the start of the statement that fired it.
_MYSQL_SAVE = """INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op,
            at, resumed, status)
        SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, '{op}',
            UNIX_TIMESTAMP(SYSDATE(6)), wait_until IS NOT NULL, status
        FROM sdj_jobs WHERE id = NEW.job_id"""
_MYSQL_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255) NOT NULL, old_status TEXT, new_status TEXT, old_attempt INTEGER,
        new_attempt INTEGER, locked_by TEXT, error TEXT, at DOUBLE PRECISION,
        old_held TEXT, new_held TEXT, began DOUBLE PRECISION, txn TEXT)""",
    """CREATE TRIGGER torture_transition AFTER UPDATE ON sdj_jobs FOR EACH ROW BEGIN
        IF NOT (OLD.status <=> NEW.status) OR NOT (OLD.paused_from <=> NEW.paused_from) THEN
            INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
                new_attempt, locked_by, error, at, old_held, new_held, began)
            VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
                LEFT(NEW.last_error, 80), UNIX_TIMESTAMP(SYSDATE(6)), OLD.paused_from,
                NEW.paused_from, UNIX_TIMESTAMP(NOW(6)));
        END IF;
        END""",
    """CREATE TABLE torture_saves (seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255), scope TEXT, call_index INTEGER, attempt INTEGER,
        locked_by TEXT, op TEXT, at DOUBLE PRECISION, resumed INTEGER, status TEXT)""",
    "CREATE TRIGGER torture_save_insert AFTER INSERT ON sdj_checkpoints FOR EACH ROW\n"
    + _MYSQL_SAVE.format(op="insert"),
    "CREATE TRIGGER torture_save_update AFTER UPDATE ON sdj_checkpoints FOR EACH ROW\n"
    + _MYSQL_SAVE.format(op="update"),
)
_OBSERVERS = {
    "sqlite": _SQLITE_OBSERVERS,
    "postgresql": _POSTGRES_OBSERVERS,
    "mysql": _MYSQL_OBSERVERS,
}


def prepare_database(storage: jobs.SQLStorage) -> None:
    """Migrate, then add the side tables and the observing triggers."""
    storage.migrate()
    observers = _OBSERVERS[storage.dialect.name]
    with storage.engine.begin() as conn:
        app.create_side_tables(conn)
        for statement in observers:
            conn.exec_driver_sql(statement)


def _query(storage: jobs.SQLStorage, statement: str, **params: Any) -> list[Any]:
    with storage.engine.connect() as conn:
        return list(conn.execute(sa.text(statement), params))


# What database errors look like: the library's own (from storage calls), or wrapped by
# SQLAlchemy or raw from the driver (from the driver's own queries through the engine).
DB_ERRORS = (jobs.StorageError, sa.exc.DBAPIError, psycopg.Error, pymysql.MySQLError, sqlite3.Error)
INTEGRITY_ERRORS = (
    sa.exc.IntegrityError,
    psycopg.IntegrityError,
    pymysql.IntegrityError,
    sqlite3.IntegrityError,
)


def _retry(what: str, fn: Any, *, timeout: float = 60) -> Any:
    """Run the driver's own database work through the outages it causes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except DB_ERRORS as exc:
            if time.monotonic() > deadline:
                raise TortureFailure(f"{what} kept failing: {exc}") from exc
            time.sleep(0.1)


# -- worker processes ---------------------------------------------------------------------


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def worker_id(self) -> str:
        return f"torture-{self.proc.pid}"


class Fleet:
    """The worker processes: start, SIGKILL, freeze, stop; and their logs."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.live: list[WorkerProc] = []
        self.all: list[WorkerProc] = []
        self.killed_ids: set[str] = set()

    def start(self) -> WorkerProc:
        log = self.logs / f"worker-{len(self.all)}.log"
        env = {**os.environ, "SDJ_DATABASE_URL": self.url, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.torture.app", str(CONCURRENCY), str(LOCK_TIMEOUT)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(proc, log)
        self.live.append(worker)
        self.all.append(worker)
        return worker

    def kill(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(30)
        self.live.remove(worker)
        self.killed_ids.add(worker.worker_id)

    def check_alive(self) -> None:
        for worker in self.live:
            code = worker.proc.poll()
            if code is not None:
                raise TortureFailure(
                    f"worker {worker.pid} exited on its own with {code}:\n{_tail(worker.log)}"
                )

    def stop_all(self, timeout: float = 60) -> None:
        """SIGTERM every live worker: each must drain and exit 0."""
        for worker in self.live:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in list(self.live):
            try:
                code = worker.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TortureFailure(
                    f"worker {worker.pid} did not stop within {timeout} s of SIGTERM:\n"
                    f"{_tail(worker.log)}"
                ) from None
            if code != 0:
                raise TortureFailure(
                    f"worker {worker.pid} exited {code} after SIGTERM:\n{_tail(worker.log)}"
                )
            self.live.remove(worker)

    def close(self) -> None:
        for worker in self.all:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
                worker.proc.kill()
                worker.proc.wait(30)

    def log_lines(self) -> Iterator[str]:
        for worker in self.all:
            yield from worker.log.read_text(errors="replace").splitlines()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def _clock(epoch: float) -> str:
    """An epoch time as the event log writes its times."""
    return datetime.fromtimestamp(epoch).isoformat(" ", "milliseconds")


# -- the run ------------------------------------------------------------------------------


@dataclass
class Expected:
    kind: str
    n: int
    not_before: float | None = None  # a delayed job's earliest start (epoch seconds)


@dataclass
class Outage:
    """A restart or a connection kill: when it ended and which workers lived through it."""

    what: str
    ended: float  # epoch seconds
    survivors: set[int]
    started: float = 0.0  # epoch seconds


@dataclass
class Control:
    """A job-control call of the driver: its commit lies between ``called`` and
    ``returned`` (epoch seconds, the driver's clock, which is the database's too)."""

    what: str  # "cancel", "pause" or "resume"
    job_id: str
    called: float
    returned: float
    result: bool | None  # None: retried through an outage, so its answer is unknown
    why: str = ""  # the action that chose the job, and its status then

    def covers(self, at: float) -> bool:
        """Whether a change recorded by the database at ``at`` may be this call's."""
        return self.called - EPS <= at <= self.returned + EPS


@dataclass
class QueuePause:
    """The pause of a queue: it holds from ``paused`` (pause_queue returned: committed)
    until ``resume_called`` at least (resume_queue not yet called)."""

    queue: str
    paused: float = 0.0
    resume_called: float = 0.0
    resumed: float = 0.0
    held: tuple[str, ...] = ()  # jobs enqueued on the queue while it was paused


class Run:
    """One torture run against a database URL."""

    def __init__(
        self,
        backend: str,
        profile: Profile,
        url: str,
        logs: Path,
        server: Server | None,
        seed: int,
    ) -> None:
        self.backend = backend
        self.profile = profile
        self.server = server  # None: SQLite
        self.rng = random.Random(seed)
        self.report = Report(backend, profile.name, seed)
        self.storage = jobs.SQLStorage(url)
        self.queue = jobs.Queue(self.storage)
        app.register(self.queue)  # the producer applies the handlers' registered options
        self.fleet = Fleet(url, logs)
        self.expected: dict[str, Expected] = {}
        self.outages: list[Outage] = []
        self.kill_ban_until = 0.0  # no kills right after an outage: survivors must work
        self.paused: WorkerProc | None = None  # the frozen worker
        self.paused_at = 0.0
        self.frozen_at = 0.0  # epoch
        self.protected: dict[int, float] = {}  # pid -> until: a thawed worker logs first
        self.signals_due: list[tuple[float, str, int]] = []  # (monotonic due, job id, n)
        self.signals_sent: dict[str, list[Any]] = defaultdict(list)  # job id -> payloads
        self.signals_retried: set[str] = set()  # jobs a send was retried for (maybe twice)
        self.freezes: list[tuple[int, float, float]] = []  # (pid, frozen, thawed), epoch
        self.controls: list[Control] = []
        self.resumes_due: list[tuple[float, str]] = []  # (monotonic due, job id)
        self.queue_pause: QueuePause | None = None
        self.events = (logs / "driver.log").open("a")

    def event(self, text: str) -> None:
        """Note a chaos event, for post-mortems beside the workers' logs."""
        self.events.write(f"{datetime.now().isoformat(' ', 'milliseconds')} {text}\n")
        self.events.flush()

    # The run ------------------------------------------------------------------------------

    def execute(self) -> Report:
        started = time.monotonic()
        prepare_database(self.storage)
        for _ in range(WORKERS[self.backend]):
            self.fleet.start()
        try:
            self._chaos()
            self._drain()
            self._await_registered()
            self.fleet.stop_all()
        finally:
            self.fleet.close()
            self.events.close()
        self.report.seconds = time.monotonic() - started
        try:
            verify(self)
        finally:
            self.storage.close()
        return self.report

    def _chaos(self) -> None:
        p = self.profile
        t0 = time.monotonic()
        batches = max(1, int(p.produce_for / 0.25))
        per_batch = math.ceil(p.jobs / batches)
        next_batch = t0
        next_kill = t0 + 2 + self.rng.uniform(*p.kill_every)
        pause_at = [t0 + p.chaos_for * (i + 1) / (p.pauses + 1) - 1 for i in range(p.pauses)]
        # A full disk is SQLite's outage: a server's own disk is not this test's to fill
        # (and a full disk there stalls rather than fails). Servers are crashed and have
        # their connections killed instead.
        outages = [(t0 + p.chaos_for * 0.5, "disk full")]
        if self.server is not None:
            outages = [
                (t0 + p.chaos_for * 0.4, "restart"),
                (t0 + p.chaos_for * 0.65, "connections"),
            ]
        next_control = t0 + 1.0
        queue_pause_at: float | None = t0 + p.chaos_for * QUEUE_PAUSE_AT
        queue_resume_at = math.inf
        while True:
            now = time.monotonic()
            if now - t0 > p.chaos_for + 60:
                raise TortureFailure(
                    f"the chaos did not finish: {self.report.kills} kills, pauses left "
                    f"{len(pause_at)} (no worker was ever caught inside a handler), "
                    f"outages left {outages}"
                )
            self.fleet.check_alive()
            if len(self.expected) < p.jobs and now >= next_batch:
                self._produce(min(per_batch, p.jobs - len(self.expected)))
                next_batch += 0.25
            self._send_signals(now)
            self._resume_due(now)
            if now >= next_control:
                self._control_one()
                next_control = time.monotonic() + self.rng.uniform(*CONTROL_EVERY)
            if queue_pause_at is not None and now >= queue_pause_at:
                self._pause_queue()
                queue_pause_at, queue_resume_at = None, time.monotonic() + QUEUE_PAUSE_FOR
            if now >= queue_resume_at:
                self._resume_queue()
                queue_resume_at = math.inf
            # No outage while the queue is paused: its claims must be able to run.
            queue_paused = queue_pause_at is None and queue_resume_at < math.inf
            if outages and now >= outages[0][0] and self.paused is None and not queue_paused:
                self._outage(outages.pop(0)[1])
            if pause_at and now >= pause_at[0] and self.paused is None:
                if self._freeze():
                    pause_at.pop(0)
                else:
                    pause_at[0] = now + 0.5  # no worker in a state to freeze; soon again
                    if len(self.expected) >= p.jobs:
                        # The backlog may have run dry, and a freeze needs a worker
                        # inside a handler: give the workers something to run.
                        self._produce(2 * WORKERS[self.backend], kind_only="plain")
            if self.paused is not None:
                self._maybe_thaw()
            if now >= next_kill and now >= self.kill_ban_until:
                self._kill_one()
                next_kill = now + self.rng.uniform(*p.kill_every)
            done = (
                len(self.expected) >= p.jobs
                and now - t0 >= p.chaos_for
                and self.report.kills >= p.min_kills
                and not outages
                and not pause_at
                and self.paused is None
                and queue_pause_at is None
                and queue_resume_at == math.inf
            )
            if done:
                return
            time.sleep(0.05)

    def _produce(
        self,
        count: int,
        kind_only: str | None = None,
        queue: str | None = None,
        delay: float | None = None,
    ) -> list[str]:
        """Enqueue ``count`` jobs (of ``kind_only``, else drawn from the mix, a share of
        them on the side queue; on ``queue`` if given; due in ``delay`` s if given); their
        ids."""
        kinds, weights = list(KINDS), list(KINDS.values())
        chosen = [kind_only] * count if kind_only else self.rng.choices(kinds, weights, k=count)
        batch: list[tuple[jobs.Job, Expected]] = []
        for kind in chosen:
            n = len(self.expected) + len(batch)
            options: dict[str, Any] = {}
            if queue is not None:
                options["queue"] = queue
            elif kind_only is None and self.rng.random() < SIDE_SHARE:
                options["queue"] = app.SIDE
            if delay is not None:
                options["delay"] = delay
            elif kind == "delayed":
                options["delay"] = self.rng.uniform(0.5, 3.0)
            job = self.queue.build_job(kind, n, options)
            job.id = f"{kind}-{n}"
            not_before = job.run_at.timestamp() if job.run_at is not None else None
            batch.append((job, Expected(kind, n, not_before)))
            if kind == "signalled":
                due = time.monotonic() + self.rng.uniform(*SIGNAL_AFTER)
                self.signals_due.append((due, job.id, n))
        job_list = [job for job, _ in batch]

        def store() -> None:
            try:
                self.storage.enqueue_many(job_list)
            except jobs.StorageError as exc:
                if not isinstance(exc.__cause__, INTEGRITY_ERRORS):
                    raise
                # The batch was committed but the answer was lost to an outage: the
                # retry collides with its own rows. A batch is all-or-nothing.
                if self.storage.get_job(job_list[0].id) is None:
                    raise

        _retry("enqueueing", store)
        for job, expected in batch:
            self.expected[job.id] = expected
        return [job.id for job in job_list]

    def _send_signals(self, now: float) -> None:
        """Send the signals due by ``now`` (monotonic): each job's n, then a decoy that it
        must never consume."""
        due = [s for s in self.signals_due if s[0] <= now]
        self.signals_due = [s for s in self.signals_due if s[0] > now]
        for _due, job_id, n in due:
            for payload in (n, app.DECOY):
                self._signal(job_id, payload)

    def _signal(self, job_id: str, payload: Any) -> None:
        """Send one signal through outages. A send whose commit's answer was lost and
        that is sent again may store it twice: such jobs are noted for the checks."""
        tries = 0

        def send() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                self.signals_retried.add(job_id)
            self.queue.signal(job_id, app.SIGNAL, payload)

        _retry("signalling", send)
        self.signals_sent[job_id].append(payload)

    # Job control ------------------------------------------------------------------------

    def _control_one(self) -> None:
        """One job-control action, drawn by CONTROLS' weights."""
        action = self.rng.choices(list(CONTROLS), list(CONTROLS.values()))[0]
        unfinished = "status NOT IN ('completed', 'failed', 'cancelled')"
        loopers = ", ".join(f"'{kind}'" for kind in app.LOOPERS)
        live = ", ".join(f"'{w.worker_id}'" for w in self.fleet.live if w is not self.paused)
        where = {
            "cancel running": f"status = 'running' AND type IN ({loopers})"
            f" AND locked_by IN ({live or 'NULL'})",
            "cancel idle": "status IN ('pending', 'retrying', 'paused')",
            "cancel fan-out": f"type = 'fanout' AND {unfinished}"
            " AND EXISTS (SELECT 1 FROM sdj_jobs c WHERE c.parent_id = sdj_jobs.id)",
            "cancel child": f"parent_id IS NOT NULL AND {unfinished}",
            "pause idle": "status IN ('pending', 'retrying') AND paused_from IS NULL",
            "pause waiting": "status = 'waiting' AND paused_from IS NULL",
            "pause running": "status = 'running' AND paused_from IS NULL",
        }
        if action == "cancel any":
            target = self.rng.choice(list(self.expected)) if self.expected else None
            state = "any"
        else:
            statement = f"SELECT id, status FROM sdj_jobs WHERE {where[action]} LIMIT 200"
            rows = _retry("choosing a job", lambda: _query(self.storage, statement))
            target, state = self.rng.choice(rows) if rows else (None, "")
        if target is None:
            return
        what = action.split()[0]
        result = self._control(what, target, f"{action}, {state}")
        if what == "pause" and result is not False:
            due = time.monotonic() + self.rng.uniform(*PAUSE_FOR)
            self.resumes_due.append((due, target))

    def _control(self, what: str, job_id: str, why: str) -> bool | None:
        """Cancel, pause or resume ``job_id`` through outages; note the call and when its
        commit happened (between the call and its return). The answer (None when the
        call had to be retried: a lost reply makes the retry answer False)."""
        tries = 0

        def call() -> bool:
            nonlocal tries
            tries += 1
            return bool(getattr(self.queue, what)(job_id))

        called = time.time()
        answer = _retry(f"{what} of {job_id}", call)
        returned = time.time()
        result = answer if tries == 1 else None
        self.controls.append(Control(what, job_id, called, returned, result, why))
        if what == "cancel":
            self.report.cancels += 1
        self.event(
            f"{what} {job_id} ({why}) -> {answer}{f' after {tries} tries' if tries > 1 else ''}"
            f", committed between {_clock(called)} and {_clock(returned)}"
        )
        return result

    def _resume_due(self, now: float) -> None:
        """Resume the paused jobs due by ``now`` (monotonic)."""
        due = [job_id for at, job_id in self.resumes_due if at <= now]
        self.resumes_due = [(at, job_id) for at, job_id in self.resumes_due if at > now]
        for job_id in due:
            self._control("resume", job_id, "its pause is over")

    def _pause_queue(self) -> None:
        """Pause the side queue, and enqueue jobs on it that must wait for its resume."""
        pause = QueuePause(app.SIDE)
        called = time.time()
        _retry("pausing the queue", lambda: self.queue.pause_queue(pause.queue))
        pause.paused = time.time()
        self.queue_pause = pause
        self.report.queue_pauses += 1
        pause.held = tuple(self._produce(SIDE_HELD, kind_only="plain", queue=pause.queue))
        self.event(
            f"paused queue {pause.queue}, committed between {_clock(called)} and "
            f"{_clock(pause.paused)}; enqueued {list(pause.held)} on it"
        )

    def _resume_queue(self) -> None:
        pause = self.queue_pause
        assert pause is not None
        pause.resume_called = time.time()
        _retry("resuming the queue", lambda: self.queue.resume_queue(pause.queue))
        pause.resumed = time.time()
        self.event(
            f"resumed queue {pause.queue}, committed between {_clock(pause.resume_called)}"
            f" and {_clock(pause.resumed)}"
        )

    def _killable(self) -> list[WorkerProc]:
        now = time.monotonic()
        return [
            w
            for w in self.fleet.live
            if w is not self.paused and self.protected.get(w.pid, 0) < now
        ]

    def _kill_one(self) -> None:
        candidates = self._killable()
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        self.fleet.kill(victim)
        self.report.kills += 1
        started = self.fleet.start()
        self.event(f"killed {victim.pid} ({victim.log.name}), started {started.pid}")

    def _outage(self, what: str) -> None:
        survivors = {w.pid for w in self.fleet.live}
        started = time.time()
        if what == "disk full":
            self._fill_disk()
            self.report.disk_fulls += 1
        elif what == "restart":
            assert self.server is not None
            # Immediate: the server crashes and recovers from its WAL (PostgreSQL) or redo
            # log (InnoDB), like a power cut.
            self.server.restart("immediate")
            self.report.restarts += 1
        else:
            assert self.server is not None
            killed = _retry("terminating connections", self._kill_connections)
            self.report.connection_kills += 1
            self.report.connections_killed += killed
        self.outages.append(Outage(what, time.time(), survivors, started))
        self.event(f"{what} done; survivors {sorted(survivors)}")
        self.kill_ban_until = time.monotonic() + 3
        # Work for the survivors, however late the outage came (a frozen worker can push
        # it past the last batch): the checks want to see them run jobs after it.
        self._produce(2 * len(survivors), kind_only="plain")

    def _kill_connections(self) -> int:
        """Kill every client connection but the driver's own; how many were killed."""
        if self.storage.dialect.name == "postgresql":
            rows = _query(
                self.storage,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            )
            return int(rows[0][0])
        # MariaDB: KILL CONNECTION each client session (its server threads are not
        # clients: they have no user, or 'system user', or run as daemons).
        killed = 0
        with self.storage.engine.connect() as conn:
            ids = conn.exec_driver_sql(
                "SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID()"
                " AND user = 'root' AND command NOT IN ('Daemon', 'Binlog Dump')"
            ).all()
            for (session,) in ids:
                try:
                    conn.exec_driver_sql(f"KILL CONNECTION {int(session)}")
                    killed += 1
                except sa.exc.DBAPIError as exc:
                    if getattr(exc.orig, "args", (None,))[0] != 1094:  # gone already
                        raise
        return killed

    def _fill_disk(self) -> None:
        """Fill the file system of the SQLite database for a while, then free it.

        Every write then fails as on a full disk (SQLITE_FULL: in SQLite's journal, its
        WAL, or the database file), in the middle of whatever the workers are doing. The
        episode is shorter than the lock timeout: it must cost a pause and nothing else.
        """
        path = self.storage.engine.url.database
        assert path is not None
        # Jobs that fall due while the disk is full: idle workers write nothing, and the
        # episode would test nothing.
        self._produce(2 * max(1, len(self.fleet.live)), kind_only="plain", delay=DISK_FULL_FOR / 3)
        # An emptied WAL: every commit from now on needs new space (a WAL in use is
        # written over in place, and would hide a full disk).
        _retry("emptying the WAL", lambda: _truncate_wal(path))
        filler = Path(path).parent / "filler"
        chunk = b"\0" * (1 << 20)
        with filler.open("wb", buffering=0) as out:
            while True:
                try:
                    out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]  # fill to the last byte
        self.event(f"disk full ({filler.stat().st_size} bytes of filler)")
        time.sleep(DISK_FULL_FOR)
        filler.unlink()

    # Freezing a worker for longer than the lock timeout: its jobs are taken back and run
    # elsewhere; when it thaws, every outcome it tries to store must be rejected.

    def _held(self, worker: WorkerProc, *, executing: bool = False) -> int:
        """How many jobs ``worker`` holds locked (whose handler runs, with ``executing``)."""
        statement = "SELECT count(*) FROM sdj_jobs j WHERE status = 'running' AND locked_by = :w"
        if executing:
            statement += (
                " AND EXISTS (SELECT 1 FROM torture_runs r"
                " WHERE r.job_id = j.id AND r.attempt = j.attempt"
                " AND r.resumed = CASE WHEN j.wait_until IS NULL THEN 0 ELSE 1 END)"
            )
        rows = _retry("reading locks", lambda: _query(self.storage, statement, w=worker.worker_id))
        return int(rows[0][0])

    def _freeze(self) -> bool:
        # Only a worker in the middle of a handler: when it thaws, that handler returns
        # and its outcome must be rejected, which the checks then count.
        candidates = [w for w in self._killable() if self._held(w, executing=True)]
        if not candidates:
            self.event("freeze: no worker inside a handler")
            return False
        worker = self.rng.choice(candidates)
        worker.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # let a transaction in flight elsewhere finish
        if not self._held(worker, executing=True) or self._holds_database_lock(worker.pid):
            # Frozen inside a transaction, it would stall everyone rather than lose its
            # locks; that is the database's lock timeout's business, not this test's.
            worker.proc.send_signal(signal.SIGCONT)
            self.event(f"freeze: {worker.pid} caught outside a handler or in a transaction")
            return False
        self.paused, self.paused_at = worker, time.monotonic()
        self.frozen_at = time.time()
        self.event(f"froze {worker.pid} ({worker.log.name}) holding {self._held(worker)} jobs")
        return True

    def _holds_database_lock(self, pid: int) -> bool:
        """Whether the frozen worker ``pid`` may hold a database lock: SQLite's write
        lock (anyone's: the file has one); on PostgreSQL, any session's transaction
        open for over 200 ms, whatever the session does: idle, sending a COPY, or
        waiting for a lock (once granted, the frozen worker holds it with all its
        transaction took before). On MariaDB, a transaction of the worker's own sessions
        that holds locks or waits for one: on a busy server some session nearly always
        waits for a claim's lock, and a read-only snapshot is listed with its age."""
        if self.storage.dialect.name == "sqlite":
            path = self.storage.engine.url.database
            assert path is not None
            conn = sqlite3.connect(path, timeout=2, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                conn.close()
        if self.storage.dialect.name == "postgresql":
            statement = (
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND xact_start < now() - interval '200 milliseconds'"
            )
        else:  # MariaDB: an InnoDB transaction that holds locks or waits for one (one
            # that only reads holds none: its frozen snapshot stalls nobody)
            statement = (
                "SELECT count(*) FROM information_schema.innodb_trx t"
                " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
                f" WHERE SUBSTRING_INDEX(p.host, ':', -1) IN ({_ports_of(pid)})"
                " AND (t.trx_lock_structs > 0 OR t.trx_state = 'LOCK WAIT')"
            )
        rows = _retry("reading sessions", lambda: _query(self.storage, statement))
        return bool(rows[0][0])

    def _maybe_thaw(self) -> None:
        worker = self.paused
        assert worker is not None
        if self._held(worker):
            if time.monotonic() - self.paused_at > 4 * LOCK_TIMEOUT + 10:
                raise TortureFailure(
                    f"the jobs of worker {worker.pid}, frozen for "
                    f"{time.monotonic() - self.paused_at:.0f} s, were never taken back"
                )
            return
        worker.proc.send_signal(signal.SIGCONT)
        self.freezes.append((worker.pid, self.frozen_at, time.time()))
        self.event(f"thawed {worker.pid}")
        self.report.pauses += 1
        self.protected[worker.pid] = time.monotonic() + 5
        self.paused = None

    def _await_registered(self) -> None:
        """Wait until every live worker has started (so SIGTERM meets its handlers)."""
        deadline = time.monotonic() + 60
        wanted = {w.worker_id for w in self.fleet.live}
        while True:
            rows = _retry(
                "listing workers", lambda: _query(self.storage, "SELECT id FROM sdj_workers")
            )
            if wanted <= {r[0] for r in rows}:
                return
            if time.monotonic() > deadline:
                raise TortureFailure(f"workers {wanted - {r[0] for r in rows}} never started")
            self.fleet.check_alive()
            time.sleep(0.1)

    def _drain(self) -> None:
        self._send_signals(math.inf)  # the jobs still waiting for theirs get them now
        deadline = time.monotonic() + self.profile.drain_timeout
        statement = (
            "SELECT count(*) FROM sdj_jobs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        )
        while True:
            self.fleet.check_alive()
            self._resume_due(time.monotonic())  # the paused jobs are resumed in their time
            left = _retry("counting", lambda: _query(self.storage, statement))[0][0]
            if not left:
                return
            if time.monotonic() > deadline:
                stuck = _query(
                    self.storage,
                    "SELECT id, status, attempt, locked_by, run_at, paused_from FROM sdj_jobs"
                    " WHERE status NOT IN ('completed', 'failed', 'cancelled') LIMIT 10",
                )
                logs = "\n".join(_tail(w.log, 1500) for w in self.fleet.live)
                raise TortureFailure(
                    f"{left} job(s) unfinished {self.profile.drain_timeout} s after the chaos:"
                    f" {stuck}\n{logs}"
                )
            time.sleep(0.2)


# -- the checks ---------------------------------------------------------------------------


# A run of a job: (attempt, resumed). A run that resumes the job from a wait keeps the
# attempt of the run that suspended it, so an attempt has a fresh run (resumed 0) and,
# as each waiting kind waits once, at most one run that resumes it (resumed 1).
RunKey = tuple[int, int]


@dataclass
class Ending:
    """How one run of a job ended: an outcome a worker stored (a suspension included),
    or a take-back."""

    attempt: int
    resumed: int
    status: str
    error: str
    reaped: bool

    @property
    def key(self) -> RunKey:
        return (self.attempt, self.resumed)


@dataclass(frozen=True)
class Save:
    """A checkpoint write: its call index, when (the database's clock), and the job's
    status as the writing transaction saw it."""

    index: int
    at: float
    status: str


@dataclass(frozen=True)
class Observed:
    """What the observers recorded, as the cancel checks read it."""

    jobs: dict[str, Any]  # id -> row
    transitions: dict[str, list[Any]]  # id -> status changes, in order
    kids: dict[str, list[str]]  # id -> its children
    saved: dict[str, list[Save]]  # id -> its checkpoint writes
    steps: dict[tuple[str, int], list[Any]]  # (id, step) -> executions of the step
    notices: dict[str, list[Any]]  # id -> loop steps of it that were told to stop


def verify(run: Run) -> None:
    """Check every guarantee against what the database recorded; fill in the report."""
    storage, report = run.storage, run.report
    problems: list[str] = []
    problem: Problem = problems.append

    jobs_rows = {
        r[0]: r
        for r in _query(
            storage,
            "SELECT id, type, status, attempt, max_retries, last_error, result, parent_id, args,"
            " queue FROM sdj_jobs",
        )
    }
    runs: dict[str, list[Any]] = defaultdict(list)
    steps: dict[tuple[str, int], list[Any]] = defaultdict(list)
    notices: dict[str, list[Any]] = defaultdict(list)  # loop steps told to stop
    ended: dict[tuple[str, RunKey], float] = {}  # (job, run) -> when its capped handler ended
    for r in _query(
        storage, "SELECT job_id, kind, step, attempt, pid, at, resumed, seen FROM torture_runs"
    ):
        if r[1] == app.NOTICED:
            notices[r[0]].append(r)
        elif r[1] == app.ENDED:
            ended[(r[0], (r[3], int(r[6])))] = float(r[5])
        else:
            (runs[r[0]] if r[2] is None else steps[(r[0], r[2])]).append(r)
    # Status changes (most checks); and every row, pause requests included (_check_pauses).
    transitions: dict[str, list[Any]] = defaultdict(list)
    changes: dict[str, list[Any]] = defaultdict(list)
    for r in _query(
        storage,
        "SELECT job_id, old_status, new_status, old_attempt, new_attempt, error, locked_by, at,"
        " old_held, new_held, began, txn FROM torture_transitions ORDER BY seq",
    ):
        changes[r[0]].append(r)
        if r[1] != r[2]:
            transitions[r[0]].append(r)
    saves: dict[tuple[str, int], list[RunKey]] = defaultdict(list)
    writes: dict[tuple[str, int], list[tuple[str, int, str]]] = defaultdict(list)
    saved: dict[str, list[Save]] = defaultdict(list)
    for r in _query(
        storage,
        "SELECT job_id, scope, call_index, attempt, locked_by, op, resumed, at, status"
        " FROM torture_saves ORDER BY seq",
    ):
        if r[1] != "":
            problem(f"job {r[0]}: a checkpoint in scope {r[1]!r}; the workflow has no nesting")
        saves[(r[0], r[2])].append((r[3], int(r[6])))
        writes[(r[0], r[2])].append((r[5], r[3], r[4]))
        saved[r[0]].append(Save(r[2], float(r[7]), r[8]))
    hooks = Counter(r[0] for r in _query(storage, "SELECT job_id FROM torture_hooks"))
    leftover = _query(
        storage,
        "SELECT count(*) FROM sdj_checkpoints c JOIN sdj_jobs j ON j.id = c.job_id"
        " WHERE j.status = 'completed'",
    )[0][0]
    if leftover:
        problem(f"{leftover} checkpoint(s) of completed jobs were not deleted")

    # The children of the fan-outs are expected too: exactly their parents' children.
    expected = dict(run.expected)
    expected.update(_children(run, jobs_rows, problem))
    missing = expected.keys() - jobs_rows.keys()
    extra = jobs_rows.keys() - expected.keys()
    if missing or extra:
        problem(f"jobs lost: {sorted(missing)[:5]}, jobs that appeared: {sorted(extra)[:5]}")
    report.jobs = len(jobs_rows)
    report.children = len(expected) - len(run.expected)
    finished_at = {job_id: _finished_at(t) for job_id, t in transitions.items()}
    kids: dict[str, list[str]] = defaultdict(list)
    for r in jobs_rows.values():
        if r[7] is not None:
            kids[r[7]].append(r[0])
    signals = _leftover_signals(storage)
    cancelled = _check_cancels(
        run, Observed(jobs_rows, transitions, kids, saved, steps, notices), problem
    )
    _check_pauses(run, changes, problem)
    _check_queue_pause(run, jobs_rows, transitions, problem)

    for job_id, exp in expected.items():
        row = jobs_rows.get(job_id)
        if row is None:
            continue
        # A child cancelled on its own counts as a failed child of its fan-out.
        kids_cancelled = frozenset(
            codec.loads(jobs_rows[kid][8])
            for kid in kids[job_id]
            if jobs_rows[kid][2] == "cancelled"
        )
        _check_job(
            run,
            exp,
            row,
            runs[job_id],
            transitions[job_id],
            hooks[job_id],
            (job_id in cancelled, kids_cancelled),
            problem,
        )
        _check_waits(run, exp, row, runs[job_id], steps, transitions[job_id], problem)
        if exp.kind == "fanout":
            _check_fan_out_wake(job_id, transitions[job_id], kids[job_id], finished_at, problem)
        if exp.kind == "signalled":
            left = signals.pop(job_id, [])
            _check_signals(run, job_id, exp.n, left, job_id in cancelled, problem)
        if exp.kind in app.CALLS and row[2] == "completed":
            # Every step and wait returned, so each had a committed checkpoint.
            unsaved = [i for i in range(app.CALLS[exp.kind]) if not saves.get((job_id, i))]
            if unsaved:
                problem(f"job {job_id} completed without checkpoints of calls {unsaved}")
    for job_id, payloads in signals.items():
        problem(f"job {job_id}: signals {payloads} left, but it waits for none")
    for (job_id, step), executions in steps.items():
        saved_by = saves.get((job_id, step - 1), [])
        after = _reruns_after_save(job_id, step, executions, saved_by, problem)
        if after:
            problem(_history(storage, job_id))
        report.step_reruns_after_save += after
        report.step_reruns_before_save += len(executions) - 1 - after
    report.steps_saved = sum(1 for attempts in saves.values() if attempts)
    retried = _retried_saves(run)
    for key, saved in writes.items():
        twice = _second_checkpoint(key, saved, retried)
        if twice:
            problem(f"step {key[1]} of job {key[0]} was checkpointed {len(saved)} times: {twice}")

    report.executions = sum(len(r) for r in runs.values())
    endings = {job_id: _endings(t) for job_id, t in transitions.items()}
    report.reaped_runs = sum(1 for e in endings.values() for x in e.values() if x.reaped)
    report.re_executions = sum(
        1
        for job_id, executions in runs.items()
        for r in executions
        if (ending := endings.get(job_id, {}).get((r[3], r[6]))) is not None and ending.reaped
    )
    report.outage_failures = sum(
        1 for e in endings.values() for x in e.values() if x.error.startswith(OUTAGE_ERRORS)
    )
    if report.outage_failures and run.server is None:
        problem(f"{report.outage_failures} runs failed with database errors on SQLite")

    _check_caps(run, expected, transitions, runs, ended, problem)
    _check_bounds(run, problem)
    _check_outages(run, runs, problem)
    _check_logs(run, problem)
    if problems:
        more = f"\n... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise TortureFailure(
            f"{len(problems)} broken guarantee(s) ({report.line()}):\n"
            + "\n".join(problems[:30])
            + more
        )


def _children(run: Run, jobs_rows: dict[str, Any], problem: Problem) -> dict[str, Expected]:
    """The children of the fan-outs, as expected jobs. Each fan-out parent must have
    exactly its ``FANOUT`` children: a replay enqueues none twice, a lost run none less."""
    found: dict[str, Expected] = {}
    by_parent: dict[str, list[int]] = defaultdict(list)
    for job_id, row in jobs_rows.items():
        parent_id = row[7]
        if parent_id is None:
            continue
        n = codec.loads(row[8])
        parent = run.expected.get(parent_id)
        if row[1] != "child" or parent is None or parent.kind != "fanout":
            problem(f"job {job_id} ({row[1]}) is a child of {parent_id}, not of a fan-out")
            continue
        found[job_id] = Expected("child", n)
        by_parent[parent_id].append(n)
    for parent_id, exp in run.expected.items():
        if exp.kind != "fanout" or parent_id not in jobs_rows:
            continue
        wanted = [app.child_n(exp.n, i) for i in range(app.FANOUT)]
        got = sorted(by_parent.get(parent_id, []))
        # A fan-out cancelled before its children were stored has none (stored later,
        # they would be refused): never some of them, never one twice.
        cancelled_early = jobs_rows[parent_id][2] == "cancelled" and not got
        if got != wanted and not cancelled_early:
            problem(f"fan-out {parent_id} has children {got}, not {wanted}")
    return found


FINISHED = ("completed", "failed", "cancelled")


def _finished_at(transitions: list[Any]) -> float | None:
    """When (the database's clock) a job's outcome became final, if it did."""
    for t in transitions:
        if t[2] in FINISHED:
            return float(t[7])
    return None


def _leftover_signals(storage: jobs.SQLStorage) -> dict[str, list[Any]]:
    """The signals no job consumed, by job, in the order they were sent."""
    left: dict[str, list[Any]] = defaultdict(list)
    for job_id, name, payload in _query(
        storage, "SELECT job_id, name, payload FROM sdj_signals ORDER BY seq"
    ):
        left[job_id].append((name, None if payload is None else codec.loads(payload)))
    return left


def _is_release(new: str, old_attempt: int, new_attempt: int, new_held: str | None) -> bool:
    """Whether a change out of ``running`` gave an unstarted run back (no ending): a fresh
    run's release takes its attempt back; a resume's keeps it and stays a due resume
    (``paused`` instead, keeping ``pending`` to give back, when a pause was asked for: a
    failure or a take-back held by a pause keeps ``retrying``)."""
    if new_attempt == old_attempt - 1:
        return True
    due = new == "pending" or (new == "paused" and new_held == "pending")
    return due and new_attempt == old_attempt


def _with_runs(transitions: list[Any]) -> list[tuple[Any, RunKey | None]]:
    """Each status change of a job, with the run it ends (None: it ends no run)."""
    resumed = 0
    changes: list[tuple[Any, RunKey | None]] = []
    for t in transitions:
        _job, old, new, old_attempt, new_attempt = t[:5]
        if new == "running":
            resumed = int(new_attempt == old_attempt)  # the claim of a resume keeps the attempt
        ends = old == "running" and not _is_release(new, old_attempt, new_attempt, t[9])
        changes.append((t, (old_attempt, resumed) if ends else None))
    return changes


def _endings(transitions: list[Any]) -> dict[RunKey, Ending]:
    """The ending of each run of a job (releases of unstarted runs excluded)."""
    endings: dict[RunKey, Ending] = {}
    for t, key in _with_runs(transitions):
        if key is None:
            continue
        new, error = t[2], t[5]
        # A completion keeps the last error, which may be an earlier take-back's; so do
        # a suspension and a cancel.
        error = "" if new in ("completed", "waiting", "cancelled") else error or ""
        # A run that was to be retried while a pause was asked for holds the job instead.
        status = "retrying" if new == "paused" else new
        endings[key] = Ending(key[0], key[1], status, error, error.startswith("WorkerLost"))
    return endings


def _check_job(
    run: Run,
    exp: Expected,
    row: Any,
    executions: list[Any],
    transitions: list[Any],
    hook_count: int,
    cancels: tuple[bool, frozenset[int]],
    problem: Problem,
) -> None:
    """``cancels``: whether a cancel of the driver (of the job or of an ancestor) made
    it cancelled, and its children that were cancelled on their own."""
    job_id, _type, status, attempt, max_retries, last_error, result = row[:7]
    kind, n = exp.kind, exp.n
    cancelled, children_cancelled = cancels
    where = f"job {job_id}"
    if max_retries != app.RETRIES[kind]:
        problem(f"{where}: max_retries {max_retries}, registered {app.RETRIES[kind]}")
    wanted = "cancelled" if cancelled else app.final_status(kind, n)
    if status != wanted:
        problem(f"{where}: ended {status}, expected {wanted} (last error {last_error!r})")
    if attempt > max_retries + 1:
        problem(f"{where}: attempt {attempt} exceeds {max_retries} retries")
    designed = app.expected_result(kind, n, children_cancelled)
    if status == "completed" and codec.loads(result) != designed:
        problem(f"{where}: result {result!r}, designed {designed!r}")

    # The status changes must form one path: no step out of a finished state, and one
    # ending per run. A second ending of the same run would be a double completion.
    state, completions, completed_by = "pending", 0, None
    seen_endings: Counter[RunKey] = Counter()
    for t, key in _with_runs(transitions):
        old, new, locked_by = t[1], t[2], t[6]
        if old != state:
            problem(f"{where}: went {old} -> {new} while it was {state}")
        if old in FINISHED:
            problem(f"{where}: left the finished state {old} for {new}")
        if key is not None:
            seen_endings[key] += 1
        if new == "completed":
            completions, completed_by = completions + 1, locked_by
        state = new
    if state != status:
        problem(f"{where}: the last recorded change led to {state}, the row says {status}")
    if completions != (status == "completed"):
        problem(f"{where}: completed {completions} times")
        run.report.double_completions += completions > 1
    # The hook fires after the commit: a SIGKILL in between may lose it, nothing else.
    hook_lost = hook_count == 0 and completed_by in run.fleet.killed_ids
    if hook_count > completions or (hook_count < completions and not hook_lost):
        problem(f"{where}: {completions} completions, {hook_count} completion hooks")
    for key, count in seen_endings.items():
        if count > 1:
            problem(f"{where}: run {key} ended {count} times")

    by_run = Counter((r[3], int(r[6])) for r in executions)
    for key, count in by_run.items():
        if count > 1:
            problem(f"{where}: run {key} executed {count} times")
        if not 1 <= key[0] <= max_retries + 1:
            problem(f"{where}: executed as attempt {key[0]} of {max_retries + 1}")
    endings = _endings(transitions)
    for key in by_run:
        if key not in endings:
            problem(f"{where}: run {key} executed but never ended")
    for ending in endings.values():
        if ending.reaped or ending.status == "cancelled":
            continue  # a cancel ends a run whether it executed or not; its outcome is void
        if ending.key not in by_run:
            problem(f"{where}: run {ending.key} stored an outcome without executing")
        if ending.status == "waiting":
            continue  # a suspension, not an outcome: _check_waits
        if ending.error.startswith(OUTAGE_ERRORS) and kind in app.DURABLE:
            continue  # a checkpoint's read or write met the outage; the job retries
        designed = app.design(kind, ending.attempt, n)
        if (ending.status, ending.error[: len(designed[1])]) != designed:
            problem(f"{where}: run {ending.key} stored {ending}, designed {designed}")

    first: dict[int, float] = {}  # attempt -> when its first run started
    for r in executions:
        first[r[3]] = min(first.get(r[3], r[5]), r[5])
    if exp.not_before is not None and first and min(first.values()) < exp.not_before - 0.01:
        problem(f"{where}: ran {exp.not_before - min(first.values()):.3f} s before its delay")
    one = endings.get((1, 0))
    if kind == "later" and one and not one.reaped and 1 in first and 2 in first:
        waited = first[2] - first[1]
        if waited < app.LATER_DELAY - 0.01:
            problem(f"{where}: retried {waited:.3f} s after RetryAfter({app.LATER_DELAY})")


def _check_waits(
    run: Run,
    exp: Expected,
    row: Any,
    executions: list[Any],
    steps: dict[tuple[str, int], list[Any]],
    transitions: list[Any],
    problem: Problem,
) -> None:
    """Jobs that wait do so once per attempt at most, in a fresh run; each wait ends
    once (by its deadline, its signal, or the child outcome that decided it), and each
    resumed run follows a wait of its own attempt. Other jobs never wait."""
    job_id, kind = row[0], exp.kind
    where = f"job {job_id}"
    report = run.report
    suspensions = [t for t in transitions if (t[1], t[2]) == ("running", "waiting")]
    # A wake-up makes the job due; ``paused`` instead when a pause of it was asked for.
    wakes = [t for t in transitions if t[1] == "waiting" and t[2] in ("pending", "paused")]
    cancelled = [t for t in transitions if (t[1], t[2]) == ("waiting", "cancelled")]
    resumed = [r for r in executions if r[6]]
    report.suspensions += len(suspensions)
    report.wake_ups += len(wakes)
    report.resumed_runs += len(resumed)
    if kind not in app.WAITING:
        if suspensions or resumed:
            problem(f"{where}: a {kind} job waited ({len(suspensions)} suspensions)")
        return
    if len(wakes) + len(cancelled) != len(suspensions):
        problem(
            f"{where}: waited {len(suspensions)} times but was woken {len(wakes)} times"
            f" (and cancelled while waiting {len(cancelled)} times)"
        )
    waited = {e.attempt for e in _endings(transitions).values() if e.status == "waiting"}
    for ending in _endings(transitions).values():
        if ending.status == "waiting" and ending.resumed:
            problem(f"{where}: run {ending.key} resumed from its wait, then waited again")
    for r in resumed:
        if r[3] not in waited:
            problem(f"{where}: run {(r[3], 1)} resumed although attempt {r[3]} never waited")
    if kind == "napper" and executions:
        # The deadline is fixed on the first run, before its sleep: the step after the
        # sleep never starts before it, on any run.
        earliest = min(r[5] for r in executions) + app.nap_seconds(exp.n)
        for r in steps.get((job_id, 3), []):
            if r[5] < earliest - 0.005:
                problem(f"{where}: the step after the sleep ran {earliest - r[5]:.3f} s early")


def _check_fan_out_wake(
    job_id: str,
    transitions: list[Any],
    kids: list[str],
    finished_at: dict[str, float | None],
    problem: Problem,
) -> None:
    """A fan-out (collect) parent is woken only once all its children have finished."""
    ends = [finished_at.get(kid) for kid in kids]
    for t in transitions:
        if t[1] != "waiting" or t[2] not in ("pending", "paused"):
            continue
        early = [kid for kid, at in zip(kids, ends, strict=True) if at is None or at > t[7] + 0.002]
        if early:
            problem(f"job {job_id}: woken at {t[7]:.3f} before children {early} had finished")


def _check_signals(
    run: Run,
    job_id: str,
    n: int,
    left: list[tuple[str, Any]],
    cancelled: bool,
    problem: Problem,
) -> None:
    """A signalled job consumed its signal (its result says which) and nothing more: the
    decoy sent after it is still pending, however often the job's runs replayed the
    wait. (A send that was retried through an outage may have stored a signal twice.)
    A job cancelled before it consumed its signal leaves it too."""
    run.report.signals += len(run.signals_sent[job_id])
    if run.signals_sent[job_id] != [n, app.DECOY]:
        problem(f"job {job_id}: the driver sent {run.signals_sent[job_id]}, not [{n}, decoy]")
    payloads = [p for name, p in left if name == app.SIGNAL]
    if len(payloads) != len(left):
        problem(f"job {job_id}: signals of other names left: {left}")
    again = job_id in run.signals_retried
    allowed = [[app.DECOY], [n, app.DECOY]] if cancelled else [[app.DECOY]]
    if payloads not in allowed and not (again and set(payloads) <= {n, app.DECOY}):
        problem(f"job {job_id}: signals {payloads} left; only the decoy should be")


def _check_cancels(run: Run, seen: Observed, problem: Problem) -> set[str]:
    """Every cancel did what it says; returns the jobs it made ``cancelled``.

    - A job is ``cancelled`` only by a cancel call of the driver, of the job itself or of
      an ancestor, under way at the moment the database recorded it (on PostgreSQL: in
      the transaction that cancelled the job the call named, if that one was unfinished).
    - A cancel that answered True made its job ``cancelled``; one that answered False
      found it finished already. Either way every descendant of the job had finished (or
      was cancelled) by the time the call returned: none finished later, none ran on.
    - Nothing of a cancelled job was checkpointed after its cancel: each checkpoint
      write was recorded before the cancel, by a transaction that saw the job not
      cancelled (the write is fenced by the job's row, which the cancel locks).
    - A run of a cancelled job began at most one step (two for the steps that
      workflow_async starts together) after the cancel had committed (the step's own
      record saw the job ``cancelled``): the refused checkpoint of that step stops it.
    - A loop step noticed that it should stop only in a cancelled job, after the cancel,
      and (its worker not frozen and no outage in between) within NOTICE_LIMIT; and one
      did, if NOTICE_AMONG cancels of running loopers (or more) took.
    """
    report = run.report
    calls: dict[str, list[Control]] = defaultdict(list)
    for c in run.controls:
        if c.what == "cancel":
            calls[c.job_id].append(c)
    cancel_of = {
        job_id: t for job_id, ts in seen.transitions.items() for t in ts if t[2] == "cancelled"
    }

    def lineage(job_id: str | None) -> Iterator[str]:
        while job_id is not None and job_id in seen.jobs:
            yield job_id
            job_id = seen.jobs[job_id][7]

    def descendants(job_id: str) -> Iterator[str]:
        for kid in seen.kids.get(job_id, []):
            yield kid
            yield from descendants(kid)

    cancelled: dict[str, Control] = {}  # job -> the call that cancelled it
    for job_id, t in cancel_of.items():
        by = [c for a in lineage(job_id) for c in calls.get(a, []) if c.covers(t[7])]
        if not by:
            problem(
                f"job {job_id}: cancelled at {_clock(t[7])}, but no cancel of it or of an"
                " ancestor was under way then"
            )
            continue
        cancelled[job_id] = by[0]
        report.cancelled_running += t[1] == "running"
        report.cascaded += all(c.job_id != job_id for c in by)
        root = cancel_of.get(by[0].job_id)
        if t[11] is not None and root is not None and by[0].covers(root[7]) and root[11] != t[11]:
            problem(
                f"job {job_id}: cancelled in transaction {t[11]}, its ancestor "
                f"{by[0].job_id} in {root[11]}"
            )
    report.cancelled = len(cancelled)

    for c in (c for cs in calls.values() for c in cs):
        if c.job_id not in seen.jobs:
            continue
        t = cancel_of.get(c.job_id)
        mine = t is not None and c.covers(t[7])
        status = seen.jobs[c.job_id][2]
        if c.result is True and not mine:
            problem(f"job {c.job_id}: its cancel at {_clock(c.called)} answered True; it {status}")
        ended = _finished_at(seen.transitions.get(c.job_id, []))
        if c.result is False and (mine or ended is None or ended > c.returned + EPS):
            problem(
                f"job {c.job_id}: its cancel at {_clock(c.called)} found it finished, but it"
                f" ended {status} at {_clock(ended or 0)}"
            )
        for kid in descendants(c.job_id):
            ended = _finished_at(seen.transitions.get(kid, []))
            if ended is None or ended > c.returned + EPS:
                problem(
                    f"job {kid}: ended {seen.jobs[kid][2]} at {_clock(ended or 0)}, after the"
                    f" cancel of its ancestor {c.job_id} had committed ({_clock(c.returned)})"
                )

    steps_of: dict[str, list[Any]] = defaultdict(list)
    for (job_id, _step), executions in seen.steps.items():
        if job_id in cancelled:
            steps_of[job_id].extend(executions)
    for job_id in sorted(cancelled):
        cut = float(cancel_of[job_id][7])
        for save in seen.saved.get(job_id, []):
            # (SQLite's whole milliseconds may make the two equal: its writers take turns,
            # so there the status the write saw is the proof.)
            if save.status == "cancelled" or save.at > cut:
                problem(
                    f"job {job_id}: checkpoint {save.index} saved at {_clock(save.at)} (the job"
                    f" {save.status}), after its cancel at {_clock(cut)}"
                )
        late = Counter((r[4], r[3], int(r[6])) for r in steps_of[job_id] if r[7] == "cancelled")
        report.late_steps += sum(late.values())
        allowed = app.CONCURRENT_STEPS.get(seen.jobs[job_id][1], 1)
        for (pid, attempt, resumed), count in late.items():
            if count > allowed:
                problem(
                    f"job {job_id}: its run {(attempt, resumed)} in pid {pid} began {count} steps"
                    f" after the cancel had committed (at most {allowed})"
                )

    for job_id, rows in seen.notices.items():
        if job_id not in cancelled:
            problem(f"job {job_id}: a step was told to stop, but the job was not cancelled")
            continue
        # The cancel committed after ``cut`` and by the return of its call: a step
        # noticed it early if before the one, late if long after the other.
        cut, returned = float(cancel_of[job_id][7]), cancelled[job_id].returned
        for r in rows:
            report.notices += 1
            pid, at = r[4], float(r[5])
            if at < cut - EPS:
                problem(f"job {job_id}: a step stopped at {_clock(at)}, before the cancel")
            frozen = any(p == pid and s < at and e > cut for p, s, e in run.freezes)
            outage = any(o.started < at and o.ended > cut for o in run.outages)
            if frozen or outage:
                continue
            report.notice_max = max(report.notice_max, at - returned)
            if at - returned > NOTICE_LIMIT:
                problem(
                    f"job {job_id}: a step of pid {pid} noticed the cancel {at - returned:.2f} s"
                    f" after it committed (at most {NOTICE_LIMIT} s)"
                )
    running = sum(1 for c in run.controls if c.result and c.why.startswith("cancel running"))
    if running >= NOTICE_AMONG and not report.notices:
        problem(f"{running} running loopers were cancelled, and no step of them noticed")
    return set(cancelled)


def _check_pauses(run: Run, changes: dict[str, list[Any]], problem: Problem) -> None:
    """Pauses of jobs hold them, and resumes give them back, exactly as asked.

    - No job is claimed while a pause of it is asked for: the claim's row still had
      ``paused_from`` empty. (A run under way at the pause goes on; it is not a claim.)
    - A paused job leaves ``paused`` for the status its pause kept (``paused_from``), or
      for ``cancelled``.
    - Every pause request the database recorded (``paused_from`` set) and every
      withdrawal by a resume (cleared, by a change that is not the run's end) was made by
      a pause or resume call of the driver of that job under way then; and every call
      that answered True is among them.
    """
    report = run.report
    calls: dict[str, list[Control]] = defaultdict(list)
    for c in run.controls:
        if c.what in ("pause", "resume"):
            calls[c.job_id].append(c)
    report.job_pauses = sum(1 for c in run.controls if c.what == "pause" and c.result)
    found: set[int] = set()  # the calls whose change was recorded
    for job_id, rows in changes.items():
        where = f"job {job_id}"
        for t in rows:
            old, new, at, old_held, new_held = t[1], t[2], float(t[7]), t[8], t[9]
            if new == "running" and old != "running" and old_held is not None:
                problem(f"{where}: claimed at {_clock(at)} while paused (from {old_held!r})")
            if new == "paused" and old != "paused":
                report.held += 1
            if old == "paused" and new not in ("paused", "cancelled", old_held):
                problem(f"{where}: left paused for {new}; its pause kept {old_held!r}")
            if old_held is None and new_held is not None:
                what = "pause"
            elif new_held is None and old_held is not None and new != "cancelled":
                if old != new and old != "paused":
                    continue  # the run ended (completed or failed): the request lapses
                what = "resume"
            else:
                continue
            by = [c for c in calls.get(job_id, []) if c.what == what and c.covers(at)]
            if not by:
                problem(f"{where}: a {what} at {_clock(at)} that no {what} call made")
            found.update(id(c) for c in by)
    for cs in calls.values():
        for c in cs:
            if c.result and id(c) not in found:
                problem(
                    f"job {c.job_id}: {c.what} at {_clock(c.called)} answered True, but no"
                    f" {c.what} of it was recorded then"
                )


def _check_queue_pause(
    run: Run, jobs_rows: dict[str, Any], transitions: dict[str, list[Any]], problem: Problem
) -> None:
    """No job of the paused queue was claimed by a claim that began after the pause had
    committed and wrote before the resume was called (a claim already under way at the
    pause may finish). Meanwhile other queues' jobs were claimed, and the jobs enqueued
    on the paused queue during its pause first ran after the resume."""
    pause = run.queue_pause
    if pause is None or not pause.resumed:
        problem("the side queue was never paused and resumed")
        return
    report = run.report
    slack = CLAIM_READ_SLACK.get(run.backend, 0.0)
    elsewhere = 0
    first_claim: dict[str, float] = {}
    for job_id, ts in transitions.items():
        row = jobs_rows.get(job_id)
        if row is None:
            continue
        for t in ts:
            if t[2] != "running" or t[1] == "running":
                continue
            at, began = float(t[7]), float(t[10])
            first_claim.setdefault(job_id, at)
            during = pause.paused < at < pause.resume_called - EPS
            if row[9] != pause.queue:
                elsewhere += during
            elif at < pause.resume_called - EPS and began - slack > pause.paused + EPS:
                problem(
                    f"job {job_id}: claimed from the paused queue {pause.queue} by a claim"
                    f" that began at {_clock(began)}, after the pause ({_clock(pause.paused)})"
                )
            elif during:
                report.in_flight_claims += 1
                report.in_flight_began = max(report.in_flight_began, began - pause.paused)
    if not elsewhere:
        problem(f"no job of another queue was claimed while {pause.queue} was paused")
    for job_id in pause.held:
        at = first_claim.get(job_id)
        if at is None:
            continue  # cancelled before it ran
        report.side_held += 1
        if at < pause.resume_called - EPS:
            problem(
                f"job {job_id}: enqueued on the paused queue, claimed at {_clock(at)}"
                f" before the resume ({_clock(pause.resume_called)})"
            )
    if not report.side_held:
        problem(f"none of the jobs enqueued on the paused queue {pause.queue} ran")


def _ports_of(pid: int) -> str:
    """``_client_ports(pid)`` for an SQL ``IN (...)`` list (``0`` when there are none)."""
    return ",".join(str(port) for port in sorted(_client_ports(pid))) or "0"


def _client_ports(pid: int) -> set[int]:
    """The local ports of the TCP connections process ``pid`` has open (its database
    sessions' client ports), read from /proc."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _most_at_once(intervals: list[tuple[float, float, str]]) -> tuple[int, float, list[str]]:
    """The most of ``intervals`` (start, end, job) in progress at one instant, that
    instant (a start: where a count rises), and the jobs then in progress. An interval
    is in progress from its start until its end; one that ends within EPS after a start
    (the same millisecond on SQLite) counts as ended before it."""
    best: tuple[int, float, list[str]] = (0, 0.0, [])
    for i, (start, _end, job_id) in enumerate(intervals):
        at_once = [job_id] + [
            other
            for j, (s, e, other) in enumerate(intervals)
            if j != i and s <= start and e > start + EPS
        ]
        if len(at_once) > best[0]:
            best = (len(at_once), start, at_once)
    return best


def _check_caps(
    run: Run,
    expected: dict[str, Expected],
    transitions: dict[str, list[Any]],
    runs: dict[str, list[Any]],
    ended: dict[tuple[str, RunKey], float],
    problem: Problem,
) -> None:
    """No concurrency cap is ever exceeded (``app.CAPS``; the keyed kind per key).

    Twice over. What the cap counts: a job is running (the database's status) from the
    change into ``running`` to the next change out of it, as the triggers timed them on
    the database's clock; at no instant are more jobs of a kind (of a key) running than
    its cap. Each change is timed before its commit, and a claim counts only the ends
    committed before its count, so a slot freed and taken again never looks shared.
    This holds without exception: a dead worker's run stops counting when it is taken
    back, which is when the trigger records its end.

    What really ran: each execution of a capped handler records its start and its end
    (``ENDED``, before it returns). An execution whose run ended by an outcome of its
    own lies within its run's running interval (it started after the claim, and ended
    before its outcome was stored); so at no instant do more executions run than the
    cap. Except, counted only up to its run's end: an execution whose run was taken back
    (its worker was SIGKILLed, frozen, or lost the database past the lock timeout) or
    cancelled while it ran. Such a run's slot returned at that moment while the handler
    may go on: a frozen worker's after its thaw, one cut off until it reconnects (its
    outcome is then fenced), a cancelled one until it returns. A SIGKILLed worker's
    handler records no end: it was dead by the take-back, a lock timeout after its last
    heartbeat. So an execution that went on past the take-back must be a frozen
    worker's, or have met an outage. One that began only after it (its worker froze
    between the claim and the handler's start) held no slot at all.
    """
    report = run.report
    frozen = {pid for pid, _frozen, _thawed in run.freezes}
    for kind, cap in app.CAPS.items():
        running: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        executing: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        for job_id, exp in expected.items():
            if exp.kind != kind:
                continue
            group = app.cap_key(exp.n) if kind in app.CAP_KEYED else ""
            spans: dict[RunKey, tuple[float, float]] = {}  # run -> its running interval
            start: float | None = None
            for t, key in _with_runs(transitions.get(job_id, [])):
                if t[2] == "running":
                    start = float(t[7])
                elif t[1] == "running" and start is not None:
                    running[group].append((start, float(t[7]), job_id))
                    if key is not None:
                        spans[key] = (start, float(t[7]))
                    start = None
            endings = _endings(transitions.get(job_id, []))
            for r in runs.get(job_id, []):
                key = (r[3], int(r[6]))
                began, span, ending = float(r[5]), spans.get(key), endings.get(key)
                if span is None or ending is None:
                    continue  # _check_job: executed but never ended
                report.capped_runs += 1
                end = ended.get((job_id, key))
                where = f"job {job_id}: run {key} (pid {r[4]})"
                if began < span[0] - EPS:
                    problem(f"{where} began {span[0] - began:.3f} s before its claim")
                if ending.reaped or ending.status == "cancelled":
                    if end is not None and end > span[1] + EPS:
                        report.outlived += 1
                        met_outage = any(
                            o.started <= span[1] and o.ended >= span[0] for o in run.outages
                        )
                        if ending.reaped and r[4] not in frozen and not met_outage:
                            problem(
                                f"{where} went on {end - span[1]:.3f} s after it was taken "
                                "back, but its worker was neither frozen nor cut off"
                            )
                    end = span[1] if end is None else min(end, span[1])
                    if began >= end:
                        # Its handler began only after the slot had returned (a worker
                        # frozen between its claim and the handler's start): it held none.
                        continue
                elif end is None:
                    problem(f"{where} stored {ending.status} but never recorded its end")
                    continue
                elif end > span[1] + EPS:
                    problem(f"{where} ended {end - span[1]:.3f} s after its outcome was stored")
                executing[group].append((began, end, job_id))
        for what, spans_of in (("running", running), ("executing", executing)):
            for group, intervals in spans_of.items():
                most, at, at_once = _most_at_once(intervals)
                if what == "running":
                    report.most_running[kind] = max(report.most_running.get(kind, 0), most)
                if most > cap:
                    problem(
                        f"{kind}{' key ' + group if group else ''}: {most} {what} at once at "
                        f"{_clock(at)}, cap {cap}: {sorted(at_once)}"
                    )


def _history(storage: jobs.SQLStorage, job_id: str) -> str:
    """Everything the observers saw of one job, in time order, for a failure message."""
    events = [
        (
            at,
            f"{'resumed ' if resumed else ''}run {attempt} of {kind}"
            f"{'' if step is None else f' step {step}'} by pid {pid}",
        )
        for kind, step, attempt, pid, at, resumed in _query(
            storage,
            "SELECT kind, step, attempt, pid, at, resumed FROM torture_runs WHERE job_id = :j",
            j=job_id,
        )
    ]
    events += [
        (
            at,
            f"{old}->{new} attempt {a0}->{a1} (was {by}) {error or ''}"
            + (f" pause {h0}->{h1}" if h0 != h1 else ""),
        )
        for old, new, a0, a1, by, error, at, h0, h1 in _query(
            storage,
            "SELECT old_status, new_status, old_attempt, new_attempt, locked_by, error, at,"
            " old_held, new_held FROM torture_transitions WHERE job_id = :j",
            j=job_id,
        )
    ]
    events += [
        (
            at,
            f"checkpoint {scope!r}/{index} saved ({op}) at attempt {attempt}"
            f"{' (resumed)' if resumed else ''} by {by}",
        )
        for scope, index, attempt, by, op, at, resumed in _query(
            storage,
            "SELECT scope, call_index, attempt, locked_by, op, at, resumed FROM torture_saves"
            " WHERE job_id = :j",
            j=job_id,
        )
    ]
    lines = [f"  {at:.3f} {what}" for at, what in sorted(events, key=lambda e: e[0] or 0)]
    return f"history of {job_id}:\n" + "\n".join(lines)


def _retried_saves(run: Run) -> set[tuple[str, str, int]]:
    """(worker id, job id, call index) of each checkpoint write a worker retried."""
    retried = set()
    for worker in run.fleet.all:
        for line in worker.log.read_text(errors="replace").splitlines():
            if found := SAVE_RETRIED.search(line):
                retried.add((worker.worker_id, found[2], int(found[1])))
    return retried


def _second_checkpoint(
    key: tuple[str, int],
    writes: list[tuple[str, int, str]],
    retried: set[tuple[str, str, int]],
) -> str:
    """Why the writes (op, attempt, holder), in order, of one checkpoint position are more
    than one checkpoint; empty if they are one.

    A position is inserted once and never written over. The save statements' conflict
    clause is a no-op update (it keeps the stored row), and the library retries a save
    whose commit's reply was lost (a server crash or a killed connection right after the
    commit): it saves the same checkpoint again and is told it is stored. So an update is
    one checkpoint only when the run that inserted it made it, and that run's worker
    logged a failed save of it; any other update is a run saving over another's
    checkpoint, and a second insert a second checkpoint.
    """
    inserts = [(attempt, by) for op, attempt, by in writes if op == "insert"]
    if len(inserts) != 1:
        return f"{len(inserts)} inserts"
    job_id, index = key
    others = [
        (op, attempt, by)
        for op, attempt, by in writes
        if op != "insert" and ((attempt, by) != inserts[0] or (by, job_id, index) not in retried)
    ]
    if others:
        return f"inserted by run {inserts[0]}, written again by {others}"
    return ""


def _reruns_after_save(
    job_id: str, step: int, executions: list[Any], saved_by: list[RunKey], problem: Problem
) -> int:
    """No run of a workflow may execute a step whose checkpoint an earlier run saved.

    Runs are ordered by (attempt, resumed): a run that resumes a job from a wait comes
    after the fresh run of its attempt. (A run that lost its lock may still be executing
    the step when the next run saves it: that is an earlier run, not a re-run after the
    checkpoint.)
    """
    if not saved_by:
        return 0
    first_save = min(saved_by)
    after = [r for r in executions if (r[3], int(r[6])) > first_save]
    for r in after:
        problem(
            f"job {job_id}: step {step} ran in run {(r[3], int(r[6]))} although run"
            f" {first_save} had checkpointed it"
        )
    return len(after)


def _check_bounds(run: Run, problem: Problem) -> None:
    """Runs taken back, and the executions lost with them, are explained by the chaos.

    A SIGKILLed or frozen worker holds at most CLAIM_AHEAD times its concurrency (it
    claims ahead of its free slots), and every one of those runs may have executed
    (finished handlers whose outcomes were still queued for storing included) and be
    taken back. An outage longer than the lock timeout could cost every worker as much.
    A lost execution is one whose run was taken back, so it is bounded by those.
    """
    r = run.report
    outages = r.restarts + r.connection_kills + r.disk_fulls
    held = CLAIM_AHEAD * (CONCURRENCY + app.SIDE_CONCURRENCY)  # both queues' slots
    everything = WORKERS[run.backend] * held
    max_reaped = held * (r.kills + r.pauses) + everything * outages
    if r.reaped_runs > max_reaped:
        problem(f"{r.reaped_runs} runs taken back; the chaos explains at most {max_reaped}")
    if r.re_executions > r.reaped_runs:
        problem(f"{r.re_executions} executions lost but only {r.reaped_runs} runs taken back")
    if r.outage_failures > everything * outages:
        problem(f"{r.outage_failures} runs failed by outages; at most {everything * outages}")
    if run.server is not None and (r.restarts, r.connection_kills) != (1, 1):
        problem(f"{r.restarts} restarts and {r.connection_kills} connection kills, wanted 1 each")
    if run.server is None and r.disk_fulls != 1:
        problem(f"{r.disk_fulls} disk-full episodes, wanted 1")
    if r.kills < run.profile.min_kills or r.pauses < run.profile.pauses:
        problem(f"only {r.kills} kills and {r.pauses} frozen workers")


def _check_outages(run: Run, runs: dict[str, list[Any]], problem: Problem) -> None:
    """Workers that lived through an outage reconnected and ran jobs again."""
    for outage in run.outages:
        worked = {
            r[4]
            for executions in runs.values()
            for r in executions
            if r[5] > outage.ended and r[4] in outage.survivors
        }
        if not worked:
            problem(f"no worker that lived through the {outage.what} ran a job after it")


def _check_logs(run: Run, problem: Problem) -> None:
    lines = list(run.fleet.log_lines())
    died = [line for line in lines if THREAD_DIED in line]
    if died:
        problem(f"worker threads died: {died[:3]}")
    run.report.fenced = sum(REJECTED in line for line in lines)
    run.report.storage_errors = sum(" failed (" in line for line in lines)
    if run.report.disk_fulls and not any(DISK_FULL in line for line in lines):
        problem("no worker met the full disk: the episode tested nothing")
    if run.report.fenced < run.report.pauses:
        problem(
            f"{run.report.pauses} workers thawed after losing their locks but only "
            f"{run.report.fenced} outcomes were rejected"
        )


# -- entry point --------------------------------------------------------------------------


@contextlib.contextmanager
def _database(backend: str, tmp: Path) -> Iterator[tuple[str, Server | None]]:
    if backend == "sqlite":
        with _small_disk(tmp / "disk") as disk:
            yield f"sqlite:///{disk / 'torture.db'}", None
    elif backend == "postgresql":
        with postgres_instance() as pg:
            yield pg.url, pg
    elif backend == "mysql":
        with mysql_instance() as server:
            yield server.url, server
    else:
        raise ValueError(f"unknown backend {backend!r}")


def _truncate_wal(path: str) -> None:
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    if busy:
        raise sqlite3.OperationalError("database is busy: the WAL was not emptied")


@contextlib.contextmanager
def _small_disk(where: Path) -> Iterator[Path]:
    """A file system of its own for the SQLite database (a tmpfs), so that the disk-full
    episode fills it and nothing else. Its files are copied beside it afterwards, for a
    post-mortem; the copies are deleted with the rest when the run passes."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(where)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode:
        raise TortureFailure(
            f"cannot mount a {DISK_SIZE} tmpfs for the SQLite run's disk-full episode "
            f"(run as root): {done.stderr.strip()}"
        )
    try:
        yield where
    finally:
        for file in where.iterdir():
            if file.name != "filler":
                shutil.copy2(file, where.parent / file.name)
        subprocess.run(["umount", "-l", str(where)], check=True)


def run(backend: str, profile: Profile, seed: int | None = None) -> Report:
    """Run the torture test once; returns the report or raises ``TortureFailure``.

    On failure the worker logs (and a SQLite database) are kept for a post-mortem.
    """
    seed = seed if seed is not None else int(datetime.now().timestamp() * 1000) % 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="sdj-torture-"))
    logs = tmp / "logs"
    logs.mkdir()
    try:
        with _database(backend, tmp) as (url, server):
            report = Run(backend, profile, url, logs, server, seed).execute()
    except BaseException:
        print(f"torture: logs kept in {tmp} (seed {seed})", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return report
