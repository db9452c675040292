"""Statements on a storage with a clock of its own: the database's clock is never read.

With the system clock the statements read the database's clock where one clock must
serve every process (lock expiries, rate-limit buckets). A storage given another clock
(a test's fake one) wraps its driver cursors in ``ClockedCursor``, which rewrites those
expressions into a bound parameter holding the storage clock's time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["CLOCK_PARAM", "DATABASE_CLOCK", "ClockedCursor", "Rewriter"]

#: The parameter that carries the storage clock's time in rewritten statements.
CLOCK_PARAM = "sdj_clock_now"

# Per dialect: what reads the database's clock, and the bound time replacing it.
DATABASE_CLOCK: dict[str, tuple[re.Pattern[str], str]] = {
    # 'now' is a time value only to SQLite's date functions; no statement compares
    # text with the word.
    "sqlite": (re.compile(r"'now'", re.IGNORECASE), f":{CLOCK_PARAM}"),
    "postgresql": (
        re.compile(
            r"\b(?:clock_timestamp|statement_timestamp|transaction_timestamp|now)\s*\(\s*\)"
            r"|\b(?:CURRENT_TIMESTAMP|LOCALTIMESTAMP)\b",
            re.IGNORECASE,
        ),
        f"CAST(%({CLOCK_PARAM})s AS timestamptz)",
    ),
    "mysql": (
        re.compile(
            r"\b(?:UTC_TIMESTAMP|CURRENT_TIMESTAMP|NOW|SYSDATE|LOCALTIMESTAMP)\s*\(\s*\d*\s*\)"
            r"|\b(?:UTC_TIMESTAMP|CURRENT_TIMESTAMP|LOCALTIMESTAMP)\b",
            re.IGNORECASE,
        ),
        f"CAST(%({CLOCK_PARAM})s AS DATETIME(6))",
    ),
}


class Rewriter:
    """A dialect's statements with the database's clock replaced by ``CLOCK_PARAM``;
    None for a statement that does not read it. Cached per statement text."""

    def __init__(self, dialect: str) -> None:
        self._pattern, self._replacement = DATABASE_CLOCK[dialect]
        self._cache: dict[str, str | None] = {}

    def __call__(self, sql: str) -> str | None:
        try:
            return self._cache[sql]
        except KeyError:
            pass
        rewritten, count = self._pattern.subn(self._replacement, sql)
        result = self._cache[sql] = rewritten if count else None
        return result


class ClockedCursor:
    """A driver cursor whose statements read ``now()`` instead of the database's clock.

    Everything but ``execute`` and ``executemany`` goes to the driver's cursor.
    """

    __slots__ = ("_cur", "_now", "_rewrite")

    def __init__(self, cur: Any, rewrite: Rewriter, now: Callable[[], Any]) -> None:
        object.__setattr__(self, "_cur", cur)
        object.__setattr__(self, "_rewrite", rewrite)
        object.__setattr__(self, "_now", now)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        clocked = self._rewrite(sql)
        if clocked is None:
            return self._cur.execute(sql) if params is None else self._cur.execute(sql, params)
        return self._cur.execute(clocked, {**(params or {}), CLOCK_PARAM: self._now()})

    def executemany(self, sql: str, params: Iterable[Mapping[str, Any]]) -> Any:
        clocked = self._rewrite(sql)
        if clocked is None:
            return self._cur.executemany(sql, params)
        now = self._now()
        return self._cur.executemany(clocked, [{**p, CLOCK_PARAM: now} for p in params])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cur, name, value)

    def __iter__(self) -> Any:
        return iter(self._cur)
