"""What the CLI tests read from a command's result: its output when it succeeded, and
its one-line error when it failed."""

from __future__ import annotations

from typing import Any


def ok(result: Any) -> str:
    """The standard output of a command that exited 0."""
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def error(result: Any) -> str:
    """The single line a command that exited 1 printed."""
    assert result.exit_code == 1, result.output
    lines = str(result.output).strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]
