"""One loop for calls that must be retried while they fail: storage writes, claim
rounds, listener connections. Pure: the caller says what to retry, how to wait and
what to log.

The waits double from ``first`` up to ``most`` seconds, starting over with each call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["keep_trying"]

T = TypeVar("T")

FIRST_WAIT = 0.1
MOST_WAIT = 5.0


def _always(_exc: Exception) -> bool:
    return True


def _never(_exc: Exception) -> bool:
    return False


def keep_trying(
    attempt: Callable[[], T],
    *,
    pause: Callable[[float], Any],
    warn: Callable[[Exception, float], None],
    retry_if: Callable[[Exception], bool] = _always,
    give_up: Callable[[Exception], bool] = _never,
    first: float = FIRST_WAIT,
    most: float = MOST_WAIT,
) -> T | None:
    """``attempt()``'s value, calling it again after each error it raises.

    An error ``retry_if`` refuses is raised. After any other, ``give_up(error)`` may end
    the loop (None is returned); else ``warn(error, wait)`` is called and ``pause(wait)``
    waits, and a true result from ``pause`` (a stop event was set) ends it too.
    """
    wait = first
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not retry_if(exc):
                raise
            if give_up(exc):
                return None
            warn(exc, wait)
            if pause(wait):
                return None
            wait = min(most, wait * 2)
