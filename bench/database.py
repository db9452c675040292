"""The benchmarks' throwaway databases: ``with database("postgresql") as url: ...``."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa

import durable_jobs as jobs

__all__ = [
    "MYSQL_ADMIN",
    "PG_ADMIN",
    "Vacuum",
    "admin_engine",
    "autovacuum_off",
    "autovacuum_standin",
    "backend_of",
    "connect",
    "database",
    "queue_on",
]

#: The server the PostgreSQL benchmarks create their databases on.
PG_ADMIN = os.environ.get("SDJ_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The server (MySQL 8 or MariaDB 10.6+) the MySQL benchmarks create their databases on.
MYSQL_ADMIN = os.environ.get("SDJ_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")


def admin_engine(backend: str) -> sa.Engine:
    """An autocommit engine on the server ``backend``'s databases are created on."""
    if backend == "postgresql":
        url = sa.make_url(PG_ADMIN).set(drivername="postgresql+psycopg")
    else:
        url = sa.make_url(MYSQL_ADMIN).set(drivername="mysql+pymysql")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@contextmanager
def database(backend: str, prefix: str = "sdj_bench") -> Iterator[str]:
    """A URL to a fresh, migrated database, removed afterwards.

    SQLite: a file in a temporary directory. PostgreSQL and MySQL: a database named
    ``prefix`` plus a random suffix on ``PG_ADMIN``'s or ``MYSQL_ADMIN``'s server,
    dropped even while connections stay (MySQL: they are killed first).
    """
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            _migrate(url)
            yield url
        return
    admin = admin_engine(backend)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    quoted = f'"{name}"' if backend == "postgresql" else f"`{name}`"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    server = PG_ADMIN if backend == "postgresql" else MYSQL_ADMIN
    url = sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE {quoted} WITH (FORCE)")
            else:
                _drop_mysql(conn, name)
        admin.dispose()


def _drop_mysql(conn: sa.Connection, name: str) -> None:
    """DROP DATABASE after killing the connections still on it (an open transaction's
    metadata locks would make the drop wait)."""
    ids = conn.exec_driver_sql(
        "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
        (name,),
    ).fetchall()
    for (thread,) in ids:
        with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended meanwhile
            conn.exec_driver_sql(f"KILL {int(thread)}")
    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def _migrate(url: str) -> None:
    storage = jobs.SQLStorage(url)
    try:
        storage.migrate()
    finally:
        storage.close()


def backend_of(url: str) -> str:
    """``"sqlite"``, ``"postgresql"`` or ``"mysql"`` (MariaDB too) for a database URL."""
    name = sa.make_url(url).get_backend_name()
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(name, name)


class MySQLConnection:
    """A PyMySQL connection with the ``execute`` shortcut of sqlite3's and psycopg's.

    Its cursors are PyMySQL's plain (buffered) ones: one statement per ``execute``.
    """

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Any = None) -> Any:
        """Run ``sql`` on a new cursor and return it, its rows read already."""
        cur = self.raw.cursor()
        cur.execute(sql, params)
        return cur

    def cursor(self) -> Any:
        return self.raw.cursor()

    def begin(self) -> None:
        self.raw.begin()

    def commit(self) -> None:
        self.raw.commit()


@contextmanager
def connect(url: str) -> Iterator[Any]:
    """A raw driver connection (sqlite3, psycopg, or PyMySQL in a ``MySQLConnection``)
    in autocommit, closed afterwards.

    It comes from the library's own engine, so it has the same settings as the library's
    connections (WAL and busy timeout on SQLite, UTC on PostgreSQL, READ COMMITTED and
    utf8mb4 on MySQL). Autocommit makes
    every statement its own transaction, in one round trip, and keeps polling reads
    from holding a snapshot open.
    """
    storage = jobs.SQLStorage(url)
    raw = storage.engine.raw_connection()
    conn = raw.driver_connection
    assert conn is not None
    if storage.dialect.name == "sqlite":
        conn.isolation_level = None
    elif storage.dialect.name == "mysql":
        conn.autocommit(True)
        conn = MySQLConnection(conn)
    else:
        conn.autocommit = True
    try:
        yield conn
    finally:
        raw.invalidate()  # never hand a connection with changed settings back to a pool
        storage.close()


@contextmanager
def queue_on(url: str, *, sqlite_synchronous: str | None = None) -> Iterator[jobs.Queue]:
    """A ``Queue`` on ``url`` (already migrated), its connections closed afterwards.

    ``sqlite_synchronous`` (``"NORMAL"``): an engine of the caller's whose SQLite
    connections commit without waiting for the disk, as docs/guarantees.md describes.
    """
    if sqlite_synchronous is None:
        storage = jobs.SQLStorage(url)
    else:
        engine = sa.create_engine(url)

        def relaxed(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA synchronous={sqlite_synchronous}")

        sa.event.listen(engine, "connect", relaxed)
        storage = jobs.SQLStorage(engine)
    try:
        yield jobs.Queue(storage)
    finally:
        storage.close()
        if sqlite_synchronous is not None:
            storage.engine.dispose()


@dataclass(frozen=True)
class Vacuum:
    """One VACUUM or ANALYZE the stand-in for autovacuum ran."""

    table: str
    action: str
    began: float  # time.perf_counter()
    seconds: float


# What autovacuum reads to decide when to vacuum or analyze a table (its defaults
# unless the server sets them), and the cost-based pacing it vacuums with.
_AUTOVACUUM_SETTINGS = """SELECT name, setting FROM pg_settings WHERE name IN (
    'autovacuum_naptime',
    'autovacuum_vacuum_threshold', 'autovacuum_vacuum_scale_factor',
    'autovacuum_vacuum_insert_threshold', 'autovacuum_vacuum_insert_scale_factor',
    'autovacuum_analyze_threshold', 'autovacuum_analyze_scale_factor',
    'autovacuum_vacuum_cost_delay', 'autovacuum_vacuum_cost_limit', 'vacuum_cost_limit')"""
_TABLE_STATS = """SELECT s.relname, GREATEST(c.reltuples, 0), s.n_dead_tup,
        s.n_ins_since_vacuum, s.n_mod_since_analyze
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.relname LIKE 'sdj%'"""


def autovacuum_off() -> bool:
    """Whether the PostgreSQL server the benchmarks use runs without autovacuum."""
    engine = admin_engine("postgresql")
    try:
        with engine.connect() as conn:
            return bool(conn.exec_driver_sql("SHOW autovacuum").scalar() == "off")
    finally:
        engine.dispose()


@contextmanager
def autovacuum_standin(url: str) -> Iterator[list[Vacuum]]:
    """On a PostgreSQL server running without autovacuum, do meanwhile what autovacuum
    would do with the server's settings (its defaults, unless set): every naptime,
    VACUUM each of the library's tables with more dead rows (or rows inserted since its
    last vacuum) than the thresholds allow, ANALYZE those changed enough, paced by the
    same cost-based delay. Yields the list of what it ran, filled as it goes.

    A queue drained for minutes on such a server claims past the index entries of
    every job claimed since the last vacuum: the benchmarks of long drains measure a
    default server, not that (docs/benchmarks.md, the longest stalls).
    """
    ran: list[Vacuum] = []
    if backend_of(url) != "postgresql" or not autovacuum_off():
        yield ran
        return
    stop = threading.Event()
    pid: list[int] = []
    thread = threading.Thread(target=_standin, args=(url, stop, ran, pid), daemon=True)
    thread.start()
    try:
        yield ran
    finally:
        stop.set()
        thread.join(1)
        if thread.is_alive() and pid:  # in a VACUUM, paced to take its time: cut it short
            with connect(url) as conn:
                conn.execute("SELECT pg_cancel_backend(%s)", (pid[0],))
            thread.join()


def _standin(url: str, stop: threading.Event, ran: list[Vacuum], pid: list[int]) -> None:
    with connect(url) as conn:
        pid.append(conn.info.backend_pid)
        settings = dict(conn.execute(_AUTOVACUUM_SETTINGS).fetchall())
        limit = settings["autovacuum_vacuum_cost_limit"]
        if int(limit) < 0:
            limit = settings["vacuum_cost_limit"]
        conn.execute(f"SET vacuum_cost_delay = {float(settings['autovacuum_vacuum_cost_delay'])}")
        conn.execute(f"SET vacuum_cost_limit = {int(limit)}")
        naptime = float(settings["autovacuum_naptime"])
        while not stop.wait(naptime):
            for table, action in _due(conn, settings):
                began = time.perf_counter()
                try:
                    conn.execute(f"{action} {table}")
                except psycopg.errors.QueryCanceled:
                    return  # cancelled at the end
                ran.append(Vacuum(table, action, began, time.perf_counter() - began))
                if stop.is_set():
                    return


def _due(conn: Any, settings: dict[str, str]) -> list[tuple[str, str]]:
    """The tables autovacuum would vacuum or analyze now, with what it would run."""

    def over(changed: float, base: str, scale: str, tuples: float) -> bool:
        return changed > float(settings[base]) + float(settings[scale]) * tuples

    due = []
    for table, tuples, dead, inserted, modified in conn.execute(_TABLE_STATS).fetchall():
        vacuum = over(
            dead, "autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor", tuples
        ) or over(
            inserted,
            "autovacuum_vacuum_insert_threshold",
            "autovacuum_vacuum_insert_scale_factor",
            tuples,
        )
        analyze = over(
            modified, "autovacuum_analyze_threshold", "autovacuum_analyze_scale_factor", tuples
        )
        if vacuum or analyze:
            due.append(
                (
                    table,
                    "VACUUM ANALYZE" if vacuum and analyze else "VACUUM" if vacuum else "ANALYZE",
                )
            )
    return due
