"""The integrations cost nothing unless used: ``import durable_jobs`` imports no web
framework, and each integration imports only its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("django", "fastapi", "starlette", "uvicorn", "jinja2")


def imported_after(statement: str) -> set[str]:
    """The HEAVY packages imported by ``statement`` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("import durable_jobs, durable_jobs.contrib", set()),
        ("import durable_jobs.contrib.fastapi", {"fastapi", "starlette", "jinja2"}),
        ("import durable_jobs.contrib.django", {"django"}),
    ],
)
def test_only_what_is_used_is_imported(statement: str, expected: set[str]) -> None:
    assert imported_after(statement) == expected
