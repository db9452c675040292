"""The torture run: worker processes, a producer, a chaos driver, and the checks.

``run(backend, profile)`` starts worker processes of ``tests/torture/app.py`` on a fresh
database (a private PostgreSQL or MariaDB server, or a SQLite file), enqueues a mix of
jobs while SIGKILLing and freezing workers (and, on a server, crashing and restarting it
and killing every client connection; on SQLite, filling its disk), waits until every job
is finished, and then checks what the database and the side tables say happened
(``verify``). It returns a ``Report`` whose
``line()`` is the summary; any broken guarantee raises ``TortureFailure``.

Database triggers record what the checks need and the workers cannot be trusted to
report: every status change of a job (``torture_transitions``) and every checkpoint
write with the attempt that wrote it (``torture_saves``), each in the same transaction
as the change itself.
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
from dataclasses import dataclass
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
KINDS = {  # kind -> share of the jobs
    "plain": 26,
    "plain_async": 10,
    "flaky": 10,
    "refuse": 7,
    "later": 8,
    "later_always": 4,
    "exhaust": 5,
    "delayed": 10,
    "workflow": 12,
    "workflow_async": 8,
}
FAILING_KINDS = {"refuse", "later_always", "exhaust"}
# What a run of a workflow fails with when the database goes away under it (the
# checkpoint read or write of jobs.call): legitimate, retried, and only on a server
# (psycopg's AdminShutdown; OperationalError and InterfaceError of psycopg and PyMySQL).
OUTAGE_ERRORS = ("OperationalError", "AdminShutdown", "InterfaceError")
THREAD_DIED = "Exception in thread"
REJECTED = "rejected: the worker lost its lock"
# A worker's warning that a checkpoint write failed and is being retried (durable.py).
SAVE_RETRIED = re.compile(r"saving checkpoint (\d+) of job (\S+) failed \(")
DISK_FULL = "database or disk is full"  # SQLite's message for SQLITE_FULL


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
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"torture: {self.jobs} jobs, {self.kills} kills, {self.restarts} restarts, "
            f"{self.re_executions} re-executions, {self.connection_kills} connection kills "
            f"({self.connections_killed} connections), {self.disk_fulls} disk-full episodes, "
            f"{self.pauses} frozen workers, "
            f"{self.executions} executions, {self.reaped_runs} runs taken back, "
            f"{self.fenced} fenced outcomes, {self.steps_saved} checkpointed steps "
            f"({self.step_reruns_before_save} re-run before their checkpoint, "
            f"{self.step_reruns_after_save} after), {self.outage_failures} runs failed by the "
            f"outage, {self.storage_errors} storage errors survived, {self.double_completions} "
            f"double completions [{self.backend}, {self.profile}, seed {self.seed}, "
            f"{self.seconds:.0f} s]"
        )


# -- the database -------------------------------------------------------------------------

_SQLITE_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL, old_status TEXT, new_status TEXT, old_attempt INTEGER,
        new_attempt INTEGER, locked_by TEXT, error TEXT, at REAL)""",
    """CREATE TRIGGER torture_transition AFTER UPDATE OF status ON sdj_jobs
        WHEN OLD.status IS NOT NEW.status BEGIN
        INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
            new_attempt, locked_by, error, at)
        VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
            substr(NEW.last_error, 1, 80), (julianday('now') - 2440587.5) * 86400.0);
        END""",
    """CREATE TABLE torture_saves (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT,
        scope TEXT, call_index INTEGER, attempt INTEGER, locked_by TEXT, op TEXT, at REAL)""",
    """CREATE TRIGGER torture_save_insert AFTER INSERT ON sdj_checkpoints BEGIN
        INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at)
            SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, 'insert',
                (julianday('now') - 2440587.5) * 86400.0
            FROM sdj_jobs WHERE id = NEW.job_id;
        END""",
    """CREATE TRIGGER torture_save_update AFTER UPDATE ON sdj_checkpoints BEGIN
        INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at)
            SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, 'update',
                (julianday('now') - 2440587.5) * 86400.0
            FROM sdj_jobs WHERE id = NEW.job_id;
        END""",
)

_POSTGRES_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL,
        old_status TEXT, new_status TEXT, old_attempt INTEGER, new_attempt INTEGER,
        locked_by TEXT, error TEXT, at DOUBLE PRECISION)""",
    """CREATE FUNCTION torture_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
                new_attempt, locked_by, error, at)
            VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
                left(NEW.last_error, 80), extract(epoch FROM clock_timestamp()));
            RETURN NULL;
        END $$""",
    """CREATE TRIGGER torture_transition AFTER UPDATE ON sdj_jobs FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION torture_transition()""",
    """CREATE TABLE torture_saves (seq BIGSERIAL PRIMARY KEY, job_id TEXT, scope TEXT,
        call_index INTEGER, attempt INTEGER, locked_by TEXT, op TEXT, at DOUBLE PRECISION)""",
    """CREATE FUNCTION torture_save() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op, at)
                SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, lower(TG_OP),
                    extract(epoch FROM clock_timestamp())
                FROM sdj_jobs WHERE id = NEW.job_id;
            RETURN NULL;
        END $$""",
    """CREATE TRIGGER torture_save AFTER INSERT OR UPDATE ON sdj_checkpoints FOR EACH ROW
        EXECUTE FUNCTION torture_save()""",
)

# MySQL/MariaDB: the same observers. A trigger has one event, so the checkpoint writes
# take two; SYSDATE(6) is the time of the write (NOW(6) would be the statement's start).
# ``<=>`` is IS NOT DISTINCT FROM. (No "%" in these: the driver formats statements.)
_MYSQL_SAVE = """INSERT INTO torture_saves (job_id, scope, call_index, attempt, locked_by, op,
            at)
        SELECT NEW.job_id, NEW.scope, NEW.call_index, attempt, locked_by, '{op}',
            UNIX_TIMESTAMP(SYSDATE(6))
        FROM sdj_jobs WHERE id = NEW.job_id"""
_MYSQL_OBSERVERS = (
    """CREATE TABLE torture_transitions (seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255) NOT NULL, old_status TEXT, new_status TEXT, old_attempt INTEGER,
        new_attempt INTEGER, locked_by TEXT, error TEXT, at DOUBLE PRECISION)""",
    """CREATE TRIGGER torture_transition AFTER UPDATE ON sdj_jobs FOR EACH ROW BEGIN
        IF NOT (OLD.status <=> NEW.status) THEN
            INSERT INTO torture_transitions (job_id, old_status, new_status, old_attempt,
                new_attempt, locked_by, error, at)
            VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.locked_by,
                LEFT(NEW.last_error, 80), UNIX_TIMESTAMP(SYSDATE(6)));
        END IF;
        END""",
    """CREATE TABLE torture_saves (seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255), scope TEXT, call_index INTEGER, attempt INTEGER,
        locked_by TEXT, op TEXT, at DOUBLE PRECISION)""",
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
        self.paused: WorkerProc | None = None
        self.paused_at = 0.0
        self.protected: dict[int, float] = {}  # pid -> until: a thawed worker logs first
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
            if outages and now >= outages[0][0] and self.paused is None:
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
            )
            if done:
                return
            time.sleep(0.05)

    def _produce(self, count: int, kind_only: str | None = None) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        chosen = [kind_only] * count if kind_only else self.rng.choices(kinds, weights, k=count)
        batch: list[tuple[jobs.Job, Expected]] = []
        for kind in chosen:
            n = len(self.expected) + len(batch)
            options: dict[str, Any] = {}
            if kind == "delayed":
                options["delay"] = self.rng.uniform(0.5, 3.0)
            job = self.queue.build_job(kind, n, options)
            job.id = f"{kind}-{n}"
            not_before = job.run_at.timestamp() if job.run_at is not None else None
            batch.append((job, Expected(kind, n, not_before)))
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
        self.outages.append(Outage(what, time.time(), survivors))
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
                " WHERE r.job_id = j.id AND r.attempt = j.attempt)"
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
        if not self._held(worker, executing=True) or self._holds_database_lock():
            # Frozen inside a transaction, it would stall everyone rather than lose its
            # locks; that is the database's lock timeout's business, not this test's.
            worker.proc.send_signal(signal.SIGCONT)
            self.event(f"freeze: {worker.pid} caught outside a handler or in a transaction")
            return False
        self.paused, self.paused_at = worker, time.monotonic()
        self.event(f"froze {worker.pid} ({worker.log.name}) holding {self._held(worker)} jobs")
        return True

    def _holds_database_lock(self) -> bool:
        """Whether a frozen worker may hold a database lock: SQLite's write lock, or a
        transaction left open (idle) by a server session for over 200 ms."""
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
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                " AND state_change < now() - interval '200 milliseconds'"
            )
        else:  # MariaDB: an InnoDB transaction whose session sleeps between statements
            statement = (
                "SELECT count(*) FROM information_schema.innodb_trx t"
                " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
                " WHERE p.command = 'Sleep' AND p.time_ms > 200"
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
        deadline = time.monotonic() + self.profile.drain_timeout
        statement = "SELECT count(*) FROM sdj_jobs WHERE status NOT IN ('completed', 'failed')"
        while True:
            self.fleet.check_alive()
            left = _retry("counting", lambda: _query(self.storage, statement))[0][0]
            if not left:
                return
            if time.monotonic() > deadline:
                stuck = _query(
                    self.storage,
                    "SELECT id, status, attempt, locked_by, run_at FROM sdj_jobs"
                    " WHERE status NOT IN ('completed', 'failed') LIMIT 10",
                )
                logs = "\n".join(_tail(w.log, 1500) for w in self.fleet.live)
                raise TortureFailure(
                    f"{left} job(s) unfinished {self.profile.drain_timeout} s after the chaos:"
                    f" {stuck}\n{logs}"
                )
            time.sleep(0.2)


# -- the checks ---------------------------------------------------------------------------


@dataclass
class Ending:
    """How one run (attempt) of a job ended: an outcome a worker stored, or a take-back."""

    attempt: int
    status: str
    error: str
    reaped: bool


def verify(run: Run) -> None:
    """Check every guarantee against what the database recorded; fill in the report."""
    storage, report = run.storage, run.report
    problems: list[str] = []
    problem: Problem = problems.append

    jobs_rows = {
        r[0]: r
        for r in _query(
            storage,
            "SELECT id, type, status, attempt, max_retries, last_error, result FROM sdj_jobs",
        )
    }
    runs: dict[str, list[Any]] = defaultdict(list)
    steps: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r in _query(storage, "SELECT job_id, kind, step, attempt, pid, at FROM torture_runs"):
        (runs[r[0]] if r[2] is None else steps[(r[0], r[2])]).append(r)
    transitions: dict[str, list[Any]] = defaultdict(list)
    for r in _query(
        storage,
        "SELECT job_id, old_status, new_status, old_attempt, new_attempt, error, locked_by"
        " FROM torture_transitions ORDER BY seq",
    ):
        transitions[r[0]].append(r)
    saves: dict[tuple[str, int], list[int]] = defaultdict(list)
    writes: dict[tuple[str, int], list[tuple[str, int, str]]] = defaultdict(list)
    for r in _query(
        storage,
        "SELECT job_id, scope, call_index, attempt, locked_by, op FROM torture_saves ORDER BY seq",
    ):
        if r[1] != "":
            problem(f"job {r[0]}: a checkpoint in scope {r[1]!r}; the workflow has no nesting")
        saves[(r[0], r[2])].append(r[3])
        writes[(r[0], r[2])].append((r[5], r[3], r[4]))
    hooks = Counter(r[0] for r in _query(storage, "SELECT job_id FROM torture_hooks"))
    leftover = _query(
        storage,
        "SELECT count(*) FROM sdj_checkpoints c JOIN sdj_jobs j ON j.id = c.job_id"
        " WHERE j.status = 'completed'",
    )[0][0]
    if leftover:
        problem(f"{leftover} checkpoint(s) of completed jobs were not deleted")

    missing = run.expected.keys() - jobs_rows.keys()
    extra = jobs_rows.keys() - run.expected.keys()
    if missing or extra:
        problem(f"jobs lost: {sorted(missing)[:5]}, jobs that appeared: {sorted(extra)[:5]}")
    report.jobs = len(jobs_rows)

    for job_id, exp in run.expected.items():
        row = jobs_rows.get(job_id)
        if row is None:
            continue
        _check_job(run, exp, row, runs[job_id], transitions[job_id], hooks[job_id], problem)
        if exp.kind in app.WORKFLOWS and row[2] == "completed":
            # call() returned for every step, so each had a committed checkpoint.
            unsaved = [i for i in range(app.STEPS) if not saves.get((job_id, i))]
            if unsaved:
                problem(f"job {job_id} completed without checkpoints of calls {unsaved}")
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
        if (ending := endings.get(job_id, {}).get(r[3])) is not None and ending.reaped
    )
    report.outage_failures = sum(
        1 for e in endings.values() for x in e.values() if x.error.startswith(OUTAGE_ERRORS)
    )
    if report.outage_failures and run.server is None:
        problem(f"{report.outage_failures} runs failed with database errors on SQLite")

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


def _endings(transitions: list[Any]) -> dict[int, Ending]:
    """The ending of each run of a job, by attempt (releases of unstarted runs excluded)."""
    endings: dict[int, Ending] = {}
    for _job, old, new, old_attempt, new_attempt, error, _by in transitions:
        if old != "running" or new_attempt == old_attempt - 1:
            continue
        # A completion keeps the last error, which may be an earlier take-back's.
        error = "" if new == "completed" else error or ""
        endings[old_attempt] = Ending(old_attempt, new, error, error.startswith("WorkerLost"))
    return endings


def _check_job(
    run: Run,
    exp: Expected,
    row: Any,
    executions: list[Any],
    transitions: list[Any],
    hook_count: int,
    problem: Problem,
) -> None:
    job_id, _type, status, attempt, max_retries, last_error, result = row
    kind, n = exp.kind, exp.n
    where = f"job {job_id}"
    if max_retries != app.RETRIES[kind]:
        problem(f"{where}: max_retries {max_retries}, registered {app.RETRIES[kind]}")
    wanted = "failed" if kind in FAILING_KINDS else "completed"
    if status != wanted:
        problem(f"{where}: ended {status}, expected {wanted} (last error {last_error!r})")
    if attempt > max_retries + 1:
        problem(f"{where}: attempt {attempt} exceeds {max_retries} retries")
    if status == "completed" and codec.loads(result) != app.expected_result(kind, n):
        problem(f"{where}: result {result!r}")

    # The status changes must form one path: no step out of a finished state, and one
    # ending per run. A second ending of the same run would be a double completion.
    state, completions, completed_by = "pending", 0, None
    seen_endings: Counter[int] = Counter()
    for _job, old, new, old_attempt, new_attempt, _error, locked_by in transitions:
        if old != state:
            problem(f"{where}: went {old} -> {new} while it was {state}")
        if old in ("completed", "failed"):
            problem(f"{where}: left the finished state {old} for {new}")
        if old == "running" and new_attempt != old_attempt - 1:
            seen_endings[old_attempt] += 1
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
    for run_attempt, count in seen_endings.items():
        if count > 1:
            problem(f"{where}: run {run_attempt} ended {count} times")

    by_attempt = Counter(r[3] for r in executions)
    for run_attempt, count in by_attempt.items():
        if count > 1:
            problem(f"{where}: run {run_attempt} executed {count} times")
        if not 1 <= run_attempt <= max_retries + 1:
            problem(f"{where}: executed as attempt {run_attempt} of {max_retries + 1}")
    endings = _endings(transitions)
    for run_attempt in by_attempt:
        if run_attempt not in endings:
            problem(f"{where}: run {run_attempt} executed but never ended")
    for ending in endings.values():
        if ending.reaped:
            continue
        if ending.attempt not in by_attempt:
            problem(f"{where}: run {ending.attempt} stored an outcome without executing")
        if ending.error.startswith(OUTAGE_ERRORS) and kind in app.WORKFLOWS:
            continue  # jobs.call met the outage; the workflow retries
        designed = app.design(kind, ending.attempt, n)
        if (ending.status, ending.error[: len(designed[1])]) != designed:
            problem(f"{where}: run {ending.attempt} stored {ending}, designed {designed}")

    first = {r[3]: r[5] for r in executions}
    if exp.not_before is not None and first and min(first.values()) < exp.not_before - 0.01:
        problem(f"{where}: ran {exp.not_before - min(first.values()):.3f} s before its delay")
    one = endings.get(1)
    if kind == "later" and one and not one.reaped and 1 in first and 2 in first:
        waited = first[2] - first[1]
        if waited < app.LATER_DELAY - 0.01:
            problem(f"{where}: retried {waited:.3f} s after RetryAfter({app.LATER_DELAY})")


def _history(storage: jobs.SQLStorage, job_id: str) -> str:
    """Everything the observers saw of one job, in time order, for a failure message."""
    events = [
        (at, f"run {attempt} of {kind}{'' if step is None else f' step {step}'} by pid {pid}")
        for kind, step, attempt, pid, at in _query(
            storage,
            "SELECT kind, step, attempt, pid, at FROM torture_runs WHERE job_id = :j",
            j=job_id,
        )
    ]
    events += [
        (at, f"{old}->{new} attempt {a0}->{a1} (was {by}) {error or ''}")
        for old, new, a0, a1, by, error, at in _query(
            storage,
            "SELECT old_status, new_status, old_attempt, new_attempt, locked_by, error, at"
            " FROM torture_transitions WHERE job_id = :j",
            j=job_id,
        )
    ]
    events += [
        (at, f"checkpoint {scope!r}/{index} saved ({op}) at attempt {attempt} by {by}")
        for scope, index, attempt, by, op, at in _query(
            storage,
            "SELECT scope, call_index, attempt, locked_by, op, at FROM torture_saves"
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
    job_id: str, step: int, executions: list[Any], saved_by: list[int], problem: Problem
) -> int:
    """No run of a workflow may execute a step whose checkpoint an earlier run saved.

    (A run that lost its lock may still be executing the step when the next run saves
    it: that is an earlier run, not a re-run after the checkpoint.)
    """
    if not saved_by:
        return 0
    first_save = min(saved_by)
    after = [r for r in executions if r[3] > first_save]
    for r in after:
        problem(
            f"job {job_id}: step {step} ran in run {r[3]} although run {first_save} "
            "had checkpointed it"
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
    held = CLAIM_AHEAD * CONCURRENCY
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
