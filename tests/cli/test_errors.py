"""User mistakes end with one ``Error:`` line on stderr, exit code 1 and no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def assert_one_line_error(result: Any, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0]
    return str(lines[0])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oracle://u@h/db", "unsupported database URL"),
        ("not a url", "invalid database URL"),
        (UNREACHABLE, "cannot reach the database"),
    ],
)
@pytest.mark.parametrize("command", [["stats"], ["migrate"], ["enqueue", "t"], ["jobs", "list"]])
def test_bad_or_unreachable_database(sdj: Any, command: list[str], url: str, expected: str) -> None:
    assert_one_line_error(sdj(*command, "--database-url", url), expected)


def test_missing_sqlite_file_is_not_created(sdj: Any, tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    assert_one_line_error(sdj("stats", "--database-url", f"sqlite:///{path}"), "does not exist")
    assert not path.exists()


def test_database_without_schema(sdj: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    assert_one_line_error(sdj("jobs", "list", "--database-url", f"sqlite:///{path}"), "sdj migrate")


@pytest.mark.parametrize("command", ["show", "retry", "delete"])
def test_unknown_job_id(sdj: Any, db_url: str, command: str) -> None:
    result = sdj("jobs", command, "no-such-id", "--database-url", db_url)
    assert_one_line_error(result, "no job with id 'no-such-id'")


@pytest.mark.parametrize("args", ["{bad", "", "[1,"])
def test_invalid_json(sdj: Any, db_url: str, args: str) -> None:
    result = sdj("enqueue", "t", "--args", args, "--database-url", db_url)
    assert_one_line_error(result, "--args is not valid JSON")


def test_invalid_enqueue_option(sdj: Any, db_url: str) -> None:
    result = sdj("enqueue", "t", "--retries", "-1", "--database-url", db_url)
    assert_one_line_error(result, "retries must be >= 0")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_such_module_xyz:queue", "cannot import 'no_such_module_xyz'"),
        ("json:queue", "does not define a Queue named 'queue' (found nothing)"),
        ("json:loads", "(found a function)"),
        ("json", "expected MODULE:QUEUE"),
    ],
)
@pytest.mark.parametrize("command", ["worker", "schedules"])
def test_module_without_the_queue(
    sdj: Any, db_url: str, command: str, target: str, expected: str
) -> None:
    assert_one_line_error(sdj(command, target, "--database-url", db_url), expected)


@pytest.mark.parametrize("queues", ["default=0", "=3", "a=x", ","])
def test_bad_queues_option(sdj: Any, app_module: Any, queues: str) -> None:
    name = app_module("import durable_jobs as jobs\nqueue = jobs.Queue('sqlite://')\n")
    assert_one_line_error(sdj("worker", f"{name}:queue", "--queues", queues), "--queues")


def test_errors_inside_the_users_module_show_their_traceback(sdj: Any, app_module: Any) -> None:
    name = app_module("import durable_jobs as jobs\nimport no_such_dependency_xyz\n")
    result = sdj("worker", f"{name}:queue")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    # The module's own traceback (its author's bug), then the command's one-line error.
    assert "Traceback" in result.stderr and "import no_such_dependency_xyz" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: importing '{name}' raised ModuleNotFoundError")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_bad_worker_option_fails_before_any_process_starts(
    sdj: Any, app_module: Any, processes: str
) -> None:
    name = app_module("import durable_jobs as jobs\nqueue = jobs.Queue('sqlite://')\n")
    result = sdj("worker", f"{name}:queue", "--lock-timeout", "-1", "--processes", processes)
    assert_one_line_error(result, "lock_timeout must be a positive number")
