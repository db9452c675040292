"""Every dialect defines every statement, with the same named parameters and migrations."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest

from durable_jobs.storage import admin, dialects
from durable_jobs.storage.dialects import (
    INSERT_WIDTH,
    STATEMENTS,
    Dialect,
    MissingDriver,
    dialect_for,
    dialect_for_url,
)
from durable_jobs.storage.mysql import STEP, MySQLDialect
from durable_jobs.storage.postgres import PostgresDialect
from durable_jobs.storage.sqlite import SQLiteDialect

_SQLITE_PARAM = re.compile(r"(?<![:\w]):(\w+)")  # not a PostgreSQL-style ::cast
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")
_PARAMS = {"sqlite": _SQLITE_PARAM, "postgresql": _PSYCOPG_PARAM, "mysql": _PSYCOPG_PARAM}

DIALECTS: list[type[Dialect]] = [SQLiteDialect, PostgresDialect, MySQLDialect]
_ids = [d.name for d in DIALECTS]


@pytest.mark.parametrize("dialect", DIALECTS, ids=_ids)
def test_every_dialect_lists_exactly_the_named_statements_in_order(
    dialect: type[Dialect],
) -> None:
    # The same order in every module, so that a reader can compare them side by side.
    assert tuple(dialect.sql) == STATEMENTS
    assert tuple(dialect.admin_sql) == admin.STATEMENTS
    assert all(text.strip() for text in (*dialect.sql.values(), *dialect.admin_sql.values()))


def _params(dialect: type[Dialect], text: str) -> set[str]:
    return set(_PARAMS[dialect.name].findall(text))


@pytest.mark.parametrize("name", STATEMENTS)
def test_a_statement_takes_the_same_parameters_in_every_dialect(name: str) -> None:
    first, *others = DIALECTS
    for other in others:
        assert _params(first, first.sql[name]) == _params(other, other.sql[name])


@pytest.mark.parametrize("name", admin.STATEMENTS)
def test_an_admin_statement_takes_the_same_parameters_in_every_dialect(name: str) -> None:
    first, *others = DIALECTS
    for other in others:
        assert _params(first, first.admin_sql[name]) == _params(other, other.admin_sql[name])


# Migrations of one backend's own (the others record the version with nothing to do):
# 13 is PostgreSQL's outcome trigger for ``Queue.result``, 14 its status index ending
# with the enqueue order (SQLite's and InnoDB's end with the row's key already).
_ONE_BACKENDS = {13: "postgresql", 14: "postgresql"}


def test_every_dialect_has_the_same_migrations() -> None:
    first, *others = DIALECTS
    for other in others:
        assert len(first.migrations) == len(other.migrations)
        for version, (mine, theirs) in enumerate(
            zip(first.migrations, other.migrations, strict=True), start=1
        ):
            if version not in _ONE_BACKENDS:
                assert len(mine) == len(theirs)
    for version, owner in _ONE_BACKENDS.items():
        for dialect in DIALECTS:
            assert bool(dialect.migrations[version - 1]) == (dialect.name == owner)


def _sqlite_schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(SQLiteDialect.create_version_table)
    for statements in SQLiteDialect.migrations:
        for statement in statements:
            conn.execute(statement)
    return conn


def test_every_sqlite_statement_compiles_against_the_migrated_schema() -> None:
    # EXPLAIN compiles a statement without running it: a misspelt column or table fails.
    conn = _sqlite_schema()
    try:
        texts = {name: SQLiteDialect.sql[name] for name in STATEMENTS}
        texts["insert_rows"] = SQLiteDialect.insert_rows(3, (0, 2))
        texts["insert_rows_all"] = SQLiteDialect.insert_rows(3, tuple(range(INSERT_WIDTH)))
        for name, text in texts.items():
            params = dict.fromkeys(_SQLITE_PARAM.findall(text))
            try:
                conn.execute("EXPLAIN " + text, params or [None] * text.count("?")).fetchall()
            except sqlite3.Error as exc:
                raise AssertionError(f"statement {name!r} does not compile: {exc}") from exc
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "sdj_jobs_dequeue" in indexes
    finally:
        conn.close()


def test_the_claim_returns_its_enqueue_order_key_by_name() -> None:
    # Rows are read by column name: the claim's ordering key has one name everywhere.
    conn = _sqlite_schema()
    try:
        text = SQLiteDialect.sql["claim"]
        params = dict.fromkeys(_SQLITE_PARAM.findall(text))
        params.update(skip="[]", limit=1, min_retries=0, lock_timeout=1.0)
        cur = conn.execute(text, params)
        assert cur.description[-1][0] == "dequeue_order"
    finally:
        conn.close()
    for dialect in DIALECTS:
        assert "AS dequeue_order" in dialect.sql["claim"]
    # MySQL's claim is in steps (no UPDATE ... RETURNING): the rows come from the last.
    assert "AS dequeue_order" in MySQLDialect.sql["claim"].split(STEP)[-1]


def test_dialect_for() -> None:
    assert isinstance(dialect_for("sqlite"), SQLiteDialect)
    assert isinstance(dialect_for("postgresql"), PostgresDialect)
    assert isinstance(dialect_for("mysql"), MySQLDialect)
    assert isinstance(dialect_for("mariadb"), MySQLDialect)
    with pytest.raises(ValueError, match="mysql"):
        dialect_for("oracle")


def test_mysql_urls_name_pymysql() -> None:
    for url in ("mysql://u@h/db", "mysql+mysqldb://u@h/db"):
        cls, engine_url = dialect_for_url(url)
        assert cls is MySQLDialect
        assert engine_url.drivername == "mysql+pymysql"


def test_a_mysql_url_without_pymysql_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_jobs.storage import mysql

    real = mysql.importlib.util.find_spec
    monkeypatch.setattr(
        mysql.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pymysql" else real(name, *a),
    )
    with pytest.raises(MissingDriver, match=r"simple-durable-jobs\[mysql\]"):
        dialects.dialect_for_url("mysql://u@h/db")


PARIS_SUMMER = timezone(timedelta(hours=2))


@pytest.mark.parametrize("dialect", [d() for d in DIALECTS], ids=_ids)
def test_times_are_bound_as_utc_and_read_back_aware(dialect: Dialect) -> None:
    aware = datetime(2030, 6, 1, 14, 30, 0, 250, tzinfo=PARIS_SUMMER)
    naive = datetime(2030, 6, 1, 12, 30, 0, 250)  # naive means UTC
    utc = datetime(2030, 6, 1, 12, 30, 0, 250, tzinfo=UTC)
    assert dialect.time_param(None) is None and dialect.time_value(None) is None
    for value in (aware, naive, utc):
        bound = dialect.time_param(value)
        if isinstance(bound, datetime) and bound.tzinfo is None:  # MySQL's DATETIME: naive UTC
            assert bound == utc.replace(tzinfo=None)
        elif isinstance(bound, datetime):
            assert bound == utc and bound.utcoffset() == timedelta(0)
        read = dialect.time_value(bound)
        assert read == utc
        assert read is not None and read.tzinfo is UTC


def test_sqlite_times_are_fixed_width_text_that_sorts_in_time_order() -> None:
    d = SQLiteDialect()
    times = [
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2030, 1, 1, 1, 59, 59, 999999, tzinfo=PARIS_SUMMER),  # 23:59:59 the day before
        datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC),
    ]
    texts = [d.time_param(t) for t in times]
    assert all(isinstance(t, str) and len(t) == len("2030-01-01 00:00:00.000000") for t in texts)
    assert texts[0] == "2030-01-01 00:00:00.000000"
    assert sorted(texts) == [d.time_param(t) for t in sorted(times)]


def test_list_params() -> None:
    assert json.loads(SQLiteDialect().list_param(("a", "b'c"))) == ["a", "b'c"]
    assert SQLiteDialect().list_param([]) == "[]"
    assert PostgresDialect().list_param(("a", "b")) == ["a", "b"]
    assert json.loads(MySQLDialect().list_param(("a", "b'c"))) == ["a", "b'c"]


@pytest.mark.parametrize("dialect", DIALECTS, ids=_ids)
def test_the_claim_orders_like_the_dequeue_index(dialect: type[Dialect]) -> None:
    # The index serves the claim only when both name the same columns in the same order.
    index = next(s for s in dialect.migrations[0] if "sdj_jobs_dequeue" in s)
    assert "priority DESC, run_at" in index
    assert "ORDER BY priority DESC, run_at" in dialect.sql["claim"]
    if dialect is MySQLDialect:
        # No partial indexes: the index leads with the status, so the claim reads it once
        # per claimable status (an IN over both would sort; tests/storage checks the plan).
        assert "(queue, status, priority DESC, run_at, seq)" in index
        assert "status = 'pending'" in dialect.sql["claim"]
        assert "status = 'retrying'" in dialect.sql["claim"]
        assert dialect.sql["claim"].count("FORCE INDEX (sdj_jobs_dequeue)") == 2
    else:
        assert "status IN ('pending', 'retrying')" in dialect.sql["claim"]
        assert "status IN ('pending', 'retrying')" in index


def test_pymysql_transient_errors() -> None:
    import pymysql
    import sqlalchemy as sa

    from durable_jobs.storage import is_transient

    transient = [
        pymysql.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.OperationalError(2006, "MySQL server has gone away"),
        pymysql.OperationalError(2013, "Lost connection to MySQL server during query"),
        pymysql.OperationalError(1205, "Lock wait timeout exceeded"),
        pymysql.OperationalError(1213, "Deadlock found when trying to get lock"),
        pymysql.InterfaceError(0, ""),
        sa.exc.OperationalError("SELECT", {}, pymysql.OperationalError(2003, "refused")),
    ]
    permanent = [
        pymysql.IntegrityError(1062, "Duplicate entry"),
        pymysql.ProgrammingError(1146, "Table doesn't exist"),
        pymysql.DataError(1406, "Data too long"),
        pymysql.OperationalError(1054, "Unknown column"),
    ]
    assert [e for e in transient if not is_transient(e)] == []
    assert [e for e in permanent if is_transient(e)] == []
