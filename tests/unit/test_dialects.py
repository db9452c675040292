"""Both dialects define every statement, with the same named parameters and migrations."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest

from durable_jobs.storage.dialects import (
    STATEMENTS,
    Dialect,
    PostgresDialect,
    SQLiteDialect,
    dialect_for,
)

_SQLITE_PARAM = re.compile(r"(?<![:\w]):(\w+)")  # not a PostgreSQL-style ::cast
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")


def test_both_dialects_define_exactly_the_listed_statements() -> None:
    assert set(SQLiteDialect.sql) == set(STATEMENTS)
    assert set(PostgresDialect.sql) == set(STATEMENTS)


@pytest.mark.parametrize("name", STATEMENTS)
def test_a_statement_takes_the_same_parameters_in_both_dialects(name: str) -> None:
    sqlite, postgres = SQLiteDialect.sql[name], PostgresDialect.sql[name]
    if not sqlite:
        assert name == "complete_many"  # SQLite runs "complete" per job instead
        return
    assert set(_SQLITE_PARAM.findall(sqlite)) == set(_PSYCOPG_PARAM.findall(postgres))


def test_both_dialects_have_the_same_migrations() -> None:
    assert len(SQLiteDialect.migrations) == len(PostgresDialect.migrations)
    for sqlite, postgres in zip(SQLiteDialect.migrations, PostgresDialect.migrations, strict=True):
        assert len(sqlite) == len(postgres)


def test_every_sqlite_statement_compiles_against_the_migrated_schema() -> None:
    # EXPLAIN compiles a statement without running it: a misspelt column or table fails.
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(SQLiteDialect.create_version_table)
        for statements in SQLiteDialect.migrations:
            for statement in statements:
                conn.execute(statement)
        for name in STATEMENTS:
            text = SQLiteDialect.sql[name]
            if not text:
                continue
            params = dict.fromkeys(_SQLITE_PARAM.findall(text))
            try:
                conn.execute("EXPLAIN " + text, params).fetchall()
            except sqlite3.Error as exc:
                raise AssertionError(f"statement {name!r} does not compile: {exc}") from exc
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "sdj_jobs_dequeue" in indexes
    finally:
        conn.close()


def test_dialect_for() -> None:
    assert isinstance(dialect_for("sqlite"), SQLiteDialect)
    assert isinstance(dialect_for("postgresql"), PostgresDialect)
    with pytest.raises(ValueError, match="mysql"):
        dialect_for("mysql")


PARIS_SUMMER = timezone(timedelta(hours=2))


@pytest.mark.parametrize("dialect", [SQLiteDialect(), PostgresDialect()], ids=["sqlite", "pg"])
def test_times_are_bound_as_utc_and_read_back_aware(dialect: Dialect) -> None:
    aware = datetime(2030, 6, 1, 14, 30, 0, 250, tzinfo=PARIS_SUMMER)
    naive = datetime(2030, 6, 1, 12, 30, 0, 250)  # naive means UTC
    utc = datetime(2030, 6, 1, 12, 30, 0, 250, tzinfo=UTC)
    assert dialect.time_param(None) is None and dialect.time_value(None) is None
    for value in (aware, naive, utc):
        bound = dialect.time_param(value)
        if isinstance(bound, datetime):
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


def test_the_claim_orders_like_the_dequeue_index() -> None:
    # The index serves the claim only when both name the same columns in the same order.
    for dialect in (SQLiteDialect, PostgresDialect):
        index = next(s for s in dialect.migrations[0] if "sdj_jobs_dequeue" in s)
        assert "priority DESC, run_at" in index
        assert "ORDER BY priority DESC, run_at" in dialect.sql["claim"]
        assert "status IN ('pending', 'retrying')" in index
        assert "status IN ('pending', 'retrying')" in dialect.sql["claim"]
