"""Fixtures: every storage and worker test runs on SQLite (a file), PostgreSQL and
MySQL (MariaDB).

PostgreSQL tests use a fresh database per test run (one per xdist process), made from
``$SDJ_TEST_POSTGRES_URL`` (default: the local server's ``postgres`` database); MySQL
tests likewise, on the server of ``$SDJ_TEST_MYSQL_URL`` (default: the local MariaDB as
root). If a server cannot be reached the run fails: a green run means every backend was
tested. ``SDJ_TEST_BACKENDS=sqlite`` narrows a local run to SQLite on purpose.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import durable_jobs as jobs

ADMIN_URL = os.environ.get(
    "SDJ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("SDJ_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")
BACKENDS = [
    b for b in os.environ.get("SDJ_TEST_BACKENDS", "sqlite,postgresql,mysql").split(",") if b
]


def _admin_engine() -> sa.Engine:
    url = sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    admin = _admin_engine()
    name = f"sdj_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL}: {exc.orig}. Start it, or set "
            "SDJ_TEST_BACKENDS=sqlite to test SQLite alone.",
            pytrace=False,
        )
    url = sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _mysql_admin_engine() -> sa.Engine:
    url = sa.make_url(MYSQL_URL).set(drivername="mysql+pymysql", database=None)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def mysql_database_url(name: str) -> str:
    """The URL of database ``name`` on the MySQL test server (naming PyMySQL, so that tests
    may make their own engines from it; the storage takes plain ``mysql://`` too)."""
    url = sa.make_url(MYSQL_URL).set(drivername="mysql+pymysql", database=name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def mysql_url(worker_id: str) -> Iterator[str]:
    """A MySQL (MariaDB) database created for this test run and dropped after it."""
    admin = _mysql_admin_engine()
    name = f"sdj_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"MySQL/MariaDB is not reachable at {MYSQL_URL}: {exc.orig}. Start it, or set "
            "SDJ_TEST_BACKENDS=sqlite,postgresql to test without it.",
            pytrace=False,
        )
    yield mysql_database_url(name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    admin.dispose()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """The xdist worker name ("master" without xdist)."""
    return str(getattr(request.config, "workerinput", {}).get("workerid", "master"))


def _reset_postgres(url: str) -> None:
    storage = jobs.SQLStorage(url)
    try:
        storage.migrate()
        with storage.engine.begin() as conn:  # commits: the engine is transactional
            conn.exec_driver_sql("TRUNCATE sdj_jobs, sdj_checkpoints, sdj_workers")
            for extra in (
                "sdj_schedules",
                "sdj_signals",
                "sdj_limits",
                "sdj_job_labels",
                "sdj_attempts",
                "sdj_queue_pauses",
            ):
                exists = conn.exec_driver_sql("SELECT to_regclass(%s)", (extra,)).scalar()
                if exists:
                    conn.exec_driver_sql(f"TRUNCATE {extra}")
    finally:
        storage.close()


def _reset_mysql(url: str) -> None:
    storage = jobs.SQLStorage(url)
    try:
        storage.migrate()
        tables = set(sa.inspect(storage.engine).get_table_names())
        with storage.engine.begin() as conn:
            for table in (
                "sdj_jobs",
                "sdj_checkpoints",
                "sdj_workers",
                "sdj_schedules",
                "sdj_signals",
                "sdj_limits",
                "sdj_job_labels",
                "sdj_attempts",
                "sdj_queue_pauses",
            ):
                if table in tables:
                    conn.exec_driver_sql(f"TRUNCATE {table}")
    finally:
        storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: "sqlite", "postgresql" or "mysql"."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL to an empty, migrated database of the backend under test."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        storage = jobs.SQLStorage(url)
        storage.migrate()
        storage.close()
        return url
    if backend == "mysql":
        url = str(request.getfixturevalue("mysql_url"))
        _reset_mysql(url)
        return url
    url = str(request.getfixturevalue("postgres_url"))
    _reset_postgres(url)
    return url


@pytest.fixture
def storage(db_url: str) -> Iterator[jobs.SQLStorage]:
    """A migrated storage on an empty database."""
    s = jobs.SQLStorage(db_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def queue(storage: jobs.SQLStorage) -> jobs.Queue:
    """A queue on an empty database."""
    return jobs.Queue(storage)
