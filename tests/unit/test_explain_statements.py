"""The explain reads: every dialect defines them, in order, with the same parameters."""

from __future__ import annotations

import re

import pytest

from durable_jobs.storage import explain
from durable_jobs.storage.dialects import Dialect
from durable_jobs.storage.mysql import MySQLDialect
from durable_jobs.storage.postgres import PostgresDialect
from durable_jobs.storage.sqlite import SQLiteDialect

DIALECTS: list[type[Dialect]] = [SQLiteDialect, PostgresDialect, MySQLDialect]
_SQLITE_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_PSYCOPG_PARAM = re.compile(r"%\((\w+)\)s")


def _params(dialect: type[Dialect], text: str) -> set[str]:
    pattern = _SQLITE_PARAM if dialect is SQLiteDialect else _PSYCOPG_PARAM
    return set(pattern.findall(text))


@pytest.mark.parametrize("dialect", DIALECTS, ids=[d.name for d in DIALECTS])
def test_every_dialect_defines_the_explain_reads_in_order(dialect: type[Dialect]) -> None:
    assert tuple(dialect.explain_sql) == explain.STATEMENTS
    assert all(text.strip() for text in dialect.explain_sql.values())


@pytest.mark.parametrize("name", explain.STATEMENTS)
def test_an_explain_read_takes_the_same_parameters_in_every_dialect(name: str) -> None:
    first, *others = DIALECTS
    for other in others:
        assert _params(first, first.explain_sql[name]) == _params(other, other.explain_sql[name])


@pytest.mark.parametrize("dialect", DIALECTS, ids=[d.name for d in DIALECTS])
def test_the_explain_reads_lock_nothing(dialect: type[Dialect]) -> None:
    for text in dialect.explain_sql.values():
        assert text.lstrip().upper().startswith("SELECT") and "FOR UPDATE" not in text.upper()
