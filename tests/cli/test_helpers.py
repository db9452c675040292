"""Pure helpers of the CLI: option parsing and URL comparison."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from durable_jobs.cli import render
from durable_jobs.cli.errors import CLIError
from durable_jobs.cli.worker_cmd import _same_database, parse_queues


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("default", {"default": 10}),
        ("default=10, critical=5", {"default": 10, "critical": 5}),
        ("a=1,b", {"a": 1, "b": 10}),
    ],
)
def test_parse_queues(text: str | None, expected: dict[str, int] | None) -> None:
    assert parse_queues(text) == expected


@pytest.mark.parametrize("text", ["a=0", "=2", "a=b", "", ","])
def test_parse_queues_rejects(text: str) -> None:
    with pytest.raises(CLIError):
        parse_queues(text)


@pytest.mark.parametrize(
    ("given", "used", "same"),
    [
        ("sqlite:///jobs.db", "sqlite:///./jobs.db", True),
        ("sqlite:///a.db", "sqlite:///b.db", False),
        ("postgresql://u@h/db", "postgresql+psycopg://u:secret@h/db", True),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/other", False),
        ("postgresql://u@h:5433/db", "postgresql+psycopg://u@h/db", False),
    ],
)
def test_same_database(given: str, used: str, same: bool) -> None:
    assert _same_database(sa.make_url(given), sa.make_url(used)) is same


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (3 * 3600 + 720, "3h12m")],
)
def test_duration(seconds: float, shown: str) -> None:
    assert render.duration(timedelta(seconds=seconds)) == shown
