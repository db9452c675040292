"""``keep_trying``: the one retry loop of storage writes, claim rounds and listeners."""

from __future__ import annotations

import pytest

from durable_jobs.backoff_loop import keep_trying


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = OSError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


def test_waits_double_up_to_the_cap_and_the_value_is_returned() -> None:
    waits: list[float] = []
    warned: list[tuple[str, float]] = []
    attempt = Flaky(8)
    result = keep_trying(
        attempt, pause=waits.append, warn=lambda exc, wait: warned.append((str(exc), wait))
    )
    assert result == "done" and attempt.calls == 9
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert warned[0] == ("failure 1", 0.1) and len(warned) == 8


def test_each_call_starts_from_the_first_wait() -> None:
    waits: list[float] = []
    for _ in range(2):
        keep_trying(Flaky(2), pause=waits.append, warn=lambda exc, wait: None)
    assert waits == [0.1, 0.2, 0.1, 0.2]


def test_an_error_not_to_retry_is_raised_at_once() -> None:
    attempt = Flaky(5, ValueError)
    with pytest.raises(ValueError, match="failure 1"):
        keep_trying(
            attempt,
            retry_if=lambda exc: not isinstance(exc, ValueError),
            pause=lambda wait: None,
            warn=lambda exc, wait: None,
        )
    assert attempt.calls == 1


def test_giving_up_or_a_pause_that_says_stop_ends_with_none() -> None:
    warned: list[float] = []
    attempt = Flaky(5)
    gave_up = keep_trying(
        attempt,
        give_up=lambda exc: str(exc) == "failure 3",
        pause=lambda wait: None,
        warn=lambda exc, wait: warned.append(wait),
    )
    assert gave_up is None and attempt.calls == 3 and warned == [0.1, 0.2]  # no warning
    attempt = Flaky(5)
    stopped = keep_trying(attempt, pause=lambda wait: True, warn=lambda exc, wait: None)
    assert stopped is None and attempt.calls == 1


def test_base_exceptions_are_never_caught() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keep_trying(interrupted, pause=lambda wait: None, warn=lambda exc, wait: None)
