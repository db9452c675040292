"""Fleet-wide concurrency caps and rate limits, enforced inside the claim.

A job type registered with ``concurrency`` (optionally per ``concurrency_key``) or
``rate_limit`` (optionally per ``rate_key``) is claimed here rather than by the plain
claim, which leaves it out. A claim that may take jobs of such types (``Claim.limited``)
runs in one transaction:

1. for each limited type in turn (by name, so that two claims lock in the same order),
   lock the type's row of ``sdj_limits`` (made on first use). Claimers of one type take
   turns from here to their commit, so what they count and spend below cannot change
   under them: no interleaving of workers over-admits;
2. count the type's running jobs (per concurrency key; the running index serves it) and
   refill its token bucket(s) on the database's clock; the room is the cap minus the
   running jobs, and the whole tokens;
3. read the type's due jobs in dequeue order (locked, skipping those others hold) up to
   the room; with keys, pick them here, skipping keys at their limit, reading further
   (leaving those keys out) while the first read held too many of them;
4. read the plain candidates too (the plain claim's own statement when there are no
   limited ones), merge all in dequeue order, take the claim's limit, update them as
   the plain claim does and spend one token per run started.

A running job counts against its type's cap from its claim until its run ends
(completed, failed, retrying, waiting, or released); a dead worker's jobs count until
they are taken back. Tokens are spent at the claim: a bucket holds at most ``N`` tokens
and refills ``N`` per window, so any interval of length ``t`` starts at most
``N + N * t / window`` runs. Rate keys' buckets are rows of their own, pruned once full.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..options import Limits
from .records import Claim, ClaimedJobs, TypeLimits

if TYPE_CHECKING:
    from ..job import Job
    from .sql import SQLStorage

__all__ = ["STATEMENTS", "claim_in", "type_limits"]

#: Statement names every dialect defines in ``limits_sql``, in this order.
STATEMENTS = (
    "lock_limit",
    "add_limit",
    "running",
    "limited_due",
    "plain_due",
    "claim_ids",
    "claim_type",
    "buckets",
    "save_bucket",
    "prune_buckets",
)

_LOCK = ("tokens", "refilled_at", "now")
_RUNNING = ("limit_key", "running")
_DUE = ("id", "priority", "run_at", "dequeue_order")
_LIMITED_DUE = (*_DUE, "concurrency_key", "rate_key")
_BUCKET = ("limit_key", "tokens", "refilled_at")
#: Candidates read at least per look when keys decide (most may belong to full keys).
_WINDOW = 64
#: Looks at most per type and claim (each leaves out the keys the one before filled).
_LOOKS = 8
#: A bucket this close below a whole token counts the token (float rounding).
_EPSILON = 1e-9
#: The shortest wait for a token that a claim reports (seconds).
_MIN_WAIT = 0.001
#: Seconds at least between prunes of one type's full rate-key buckets.
_PRUNE_EVERY = 60.0
# The key a job counts under when its type has no keys, or when it has none (a NULL key).
_WHOLE = ""


def type_limits(job_type: str, limits: Limits) -> TypeLimits:
    """The limits a claim enforces for ``job_type``, from its registration's ``limits``."""
    rate = limits.rate_limit
    return TypeLimits(
        job_type,
        concurrency=limits.concurrency,
        concurrency_keyed=limits.concurrency_key is not None,
        rate=None if rate is None else rate.count,
        per=1.0 if rate is None else rate.per,
        rate_keyed=rate is not None and limits.rate_key is not None,
    )


@dataclass
class _Bucket:
    """A token bucket as read and refilled at the database's ``now``."""

    tokens: float
    taken: int = 0  # picked in this claim (spent once the claim has them)

    @property
    def left(self) -> float:
        return self.tokens - self.taken


@dataclass
class _Look:
    """What a claim found for one limited type: the jobs it may take, in dequeue order,
    and why it may take no more of them (when every pick is taken)."""

    limits: TypeLimits
    now: Any = None  # the database's time of the look, as stored
    picks: list[tuple[Any, ...]] = field(default_factory=list)  # rows read as _LIMITED_DUE
    held: float | None = None  # seconds until a retry may find room (inf: a run's end)
    drained: bool = False  # no more due jobs (outside keys at their limit)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    room: int = 0  # how many the type's limits admit (a type without keys)
    cap_binds: bool = False  # the cap, rather than the tokens, sets the room

    def took(self, taken: int, limit: int) -> None:
        """Why a claim of up to ``limit`` jobs that took ``taken`` of a type without keys
        took no more of it."""
        whole = self.buckets.get(_WHOLE)
        if whole is not None:
            whole.taken = taken
        if taken < self.room:
            self.drained = True
        elif self.room < limit:  # a limit of the type binds
            if self.cap_binds or whole is None:
                self.held = math.inf
            else:
                self.held = _until_token(self.limits, whole)


class _Prunes:
    """When each storage last pruned each type's full rate-key buckets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: weakref.WeakKeyDictionary[SQLStorage, dict[str, float]] = (
            weakref.WeakKeyDictionary()
        )

    def due(self, storage: SQLStorage, job_type: str, every: float) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.setdefault(storage, {})
            if now - last.get(job_type, -math.inf) < every:
                return False
            last[job_type] = now
            return True


_prunes = _Prunes()


def claim_in(
    storage: SQLStorage,
    cur: Any,
    claim: Claim,
    worker_id: str,
    now: datetime,
    lock_timeout: float,
) -> ClaimedJobs:
    """Make ``claim`` (which has ``limited`` types) in the transaction on ``cur``: see the
    module's description. Returns the jobs in dequeue order, with the types held back."""
    d = storage.dialect
    skip = sorted({*claim.skip_types, *(t.job_type for t in claim.limited)})
    due = {"queue": claim.queue, "now": d.time_param(now), "min_retries": claim.min_retries}
    if not claim.plain and len(claim.limited) == 1:
        [only] = claim.limited
        if not (only.concurrency_keyed or only.rate_keyed):
            return _claim_type(storage, cur, only, due, claim.limit, worker_id, lock_timeout)
    looks = [
        _look(storage, cur, limits, due, claim.limit)
        for limits in sorted(claim.limited, key=lambda t: t.job_type)
    ]
    limited = [row for look in looks for row in look.picks]
    if claim.plain and not limited:
        # Nothing limited to take: the plain claim, as ever.
        alone = Claim(claim.queue, claim.limit, skip, claim.min_retries)
        jobs = storage._claim_in(cur, alone, worker_id, now, lock_timeout)
        return _claimed(jobs, looks, set(), len(jobs) < claim.limit)
    candidates = [row[:4] for row in limited]
    plain_drained = False
    if claim.plain:
        params = {**due, "skip": d.list_param(skip), "limit": claim.limit}
        plain = _read(storage, cur, "plain_due", params, _DUE)
        plain_drained = len(plain) < claim.limit
        candidates += plain
    # Dequeue order: priority (higher first), run time, enqueue order.
    candidates.sort(key=lambda r: (-r[1], r[2], r[3]))
    chosen = [row[0] for row in candidates[: claim.limit]]
    jobs = _take(storage, cur, chosen, worker_id, _start(d, looks, now), lock_timeout)
    _spend(storage, cur, looks, jobs)
    taken = {job.id for job in jobs}
    cut = {look.limits.job_type for look in looks if any(r[0] not in taken for r in look.picks)}
    return _claimed(jobs, looks, cut, plain_drained)


def _claim_type(
    storage: SQLStorage,
    cur: Any,
    limits: TypeLimits,
    due: dict[str, Any],
    limit: int,
    worker_id: str,
    lock_timeout: float,
) -> ClaimedJobs:
    """A claim of one type without keys alone (the claims that follow its runs' ends):
    its room found, then its jobs taken by one statement, as the plain claim does."""
    d = storage.dialect
    look = _look(storage, cur, limits, due, limit, pick=False)
    jobs: list[Job] = []
    if look.held is None:
        params = {
            **due,
            "type": limits.job_type,
            "limit": look.room,
            "worker": worker_id,
            "lock_timeout": lock_timeout,
            "now": _start(d, [look], d.time_value(due["now"])),
        }
        sql = d.limits_sql["claim_type"]
        rows = d.claim_rows(cur, params, sql)
        jobs = _jobs(storage, cur, sql, rows)
        look.took(len(jobs), limit)
        _spend(storage, cur, [look], jobs)
    return _claimed(jobs, [look], set(), False)


def _start(d: Any, looks: Sequence[_Look], now: datetime | None) -> Any:
    """When the runs of a limited claim start: when the tokens they spend were counted,
    at the database's time of the last look (each read under its type's lock), but never
    before the claim's ``now``, which found them due (SQLite's clock counts only
    milliseconds, so a job enqueued in the claim's millisecond would not be due yet)."""
    times = [t for t in (d.time_value(look.now) for look in looks) if t is not None]
    if now is not None:
        times.append(now)
    return d.time_param(max(times))


def _claimed(
    jobs: Sequence[Job], looks: Sequence[_Look], cut: set[str], plain_drained: bool
) -> ClaimedJobs:
    """``jobs`` with the types held back; a type some of whose picks were left out (the
    claim's limit was reached first) had more to give, and is not held."""
    held: dict[str, float] = {}
    drained = set()
    for look in looks:
        name = look.limits.job_type
        if name in cut:
            continue
        if look.held is not None:
            held[name] = look.held
        if look.drained:
            drained.add(name)
    return ClaimedJobs(jobs, held, frozenset(drained), plain_drained)


def _read(
    storage: SQLStorage, cur: Any, name: str, params: dict[str, Any], fields: tuple[str, ...]
) -> list[tuple[Any, ...]]:
    sql = storage.dialect.limits_sql[name]
    cur.execute(sql, params)
    rows = cur.fetchall()
    return storage._named(cur, sql, fields, rows) if rows else []


def _lock(storage: SQLStorage, cur: Any, job_type: str) -> tuple[Any, Any, Any]:
    """Lock ``job_type``'s row, made on first use: (tokens, refilled_at, now)."""
    params = {"type": job_type}
    rows = _read(storage, cur, "lock_limit", params, _LOCK)
    if not rows:
        cur.execute(storage.dialect.limits_sql["add_limit"], params)
        rows = _read(storage, cur, "lock_limit", params, _LOCK)
    [(tokens, refilled_at, now)] = rows
    return tokens, refilled_at, now


def _refill(
    limits: TypeLimits, tokens: float | None, refilled_at: datetime | None, now: datetime
) -> float:
    """The tokens of a bucket last written at ``refilled_at`` (None: a new, full one)."""
    assert limits.rate is not None
    if tokens is None or refilled_at is None:
        return float(limits.rate)
    elapsed = max(0.0, (now - refilled_at).total_seconds())
    return min(float(limits.rate), float(tokens) + elapsed * limits.rate / limits.per)


def _until_token(limits: TypeLimits, bucket: _Bucket) -> float:
    """Seconds until ``bucket`` holds a whole token again (a millisecond at least: a
    retry sooner would find it short again)."""
    assert limits.rate is not None
    return max(_MIN_WAIT, (1.0 - bucket.left) * limits.per / limits.rate)


def _look(
    storage: SQLStorage,
    cur: Any,
    limits: TypeLimits,
    due: dict[str, Any],
    limit: int,
    *,
    pick: bool = True,
) -> _Look:
    """Lock ``limits.job_type`` and pick up to ``limit`` of its due jobs within its limits
    (``pick=False``, for a type without keys: only find how many it admits, ``room``)."""
    d = storage.dialect
    name = limits.job_type
    tokens, refilled_at, stored_now = _lock(storage, cur, name)
    look = _Look(limits, stored_now)
    now = d.time_value(stored_now)
    assert now is not None
    room = limit
    cap_binds = False
    running: Counter[str] = Counter()
    if limits.concurrency is not None:
        rows = _read(storage, cur, "running", {"type": name}, _RUNNING)
        running.update({key or _WHOLE: int(n) for key, n in rows})
        if not limits.concurrency_keyed:
            free = limits.concurrency - sum(running.values())
            if free <= 0:
                look.held = math.inf
                return look
            cap_binds = free < room
            room = min(room, free)
    whole: _Bucket | None = None
    if limits.rate is not None:
        whole = _Bucket(_refill(limits, tokens, d.time_value(refilled_at), now))
        look.buckets[_WHOLE] = whole
        if not limits.rate_keyed:
            free = math.floor(whole.tokens + _EPSILON)
            if free < 1:
                look.held = _until_token(limits, whole)
                return look
            if free < room:
                cap_binds, room = False, free
    look.room, look.cap_binds = room, cap_binds
    if not (limits.concurrency_keyed or limits.rate_keyed):
        if pick:
            params = {**due, **_no_exclusions(d), "type": name, "limit": room}
            look.picks = _read(storage, cur, "limited_due", params, _LIMITED_DUE)
            look.took(len(look.picks), limit)
        return look
    _pick_by_key(storage, cur, look, due, room, running, now)
    if len(look.picks) >= room and room < limit:  # a limit of the whole type binds
        look.held = math.inf if cap_binds or whole is None else _until_token(limits, whole)
    return look


def _no_exclusions(d: Any) -> dict[str, Any]:
    empty = d.list_param([])
    return {"full_keys": empty, "empty_keys": empty, "picked": empty}


def _pick_by_key(
    storage: SQLStorage,
    cur: Any,
    look: _Look,
    due: dict[str, Any],
    room: int,
    running: Counter[str],
    now: datetime,
) -> None:
    """Pick up to ``room`` due jobs of a type with keys, in dequeue order, each within
    its concurrency key's cap and its rate key's tokens; keys found at their limit are
    left out of the next look, which reads on while the one before filled its window."""
    d = storage.dialect
    limits = look.limits
    name = limits.job_type
    cap = limits.concurrency
    full: set[str] = set()  # concurrency keys at their cap
    if cap is not None and limits.concurrency_keyed:
        full = {key for key, n in running.items() if n >= cap}
    empty: set[str] = set()  # rate keys without a whole token
    if limits.rate_keyed:
        _prune(storage, cur, limits, now)
        if look.buckets[_WHOLE].left < 1 - _EPSILON:
            empty.add(_WHOLE)
    counted: Counter[str] = Counter()  # picked per concurrency key
    window = max(_WINDOW, 4 * room)
    for _ in range(_LOOKS):
        params = {
            **due,
            "type": name,
            "limit": window,
            "full_keys": d.list_param(sorted(full)),
            "empty_keys": d.list_param(sorted(empty)),
            "picked": d.list_param([row[0] for row in look.picks]),
        }
        rows = _read(storage, cur, "limited_due", params, _LIMITED_DUE)
        if limits.rate_keyed:
            _load_buckets(storage, cur, look, (row[5] for row in rows), now)
        for row in rows:
            ckey = row[4] if limits.concurrency_keyed else _WHOLE
            rkey = row[5] if limits.rate_keyed else _WHOLE
            if (
                cap is not None
                and limits.concurrency_keyed
                and running[ckey] + counted[ckey] >= cap
            ):
                full.add(ckey)
                continue
            bucket = look.buckets.get(rkey) if limits.rate is not None else None
            if bucket is not None and bucket.left < 1 - _EPSILON:
                empty.add(rkey)
                continue
            look.picks.append(row)
            counted[ckey] += 1
            if bucket is not None:
                bucket.taken += 1
            if len(look.picks) >= room:
                return
        if len(rows) < window:
            break
    else:
        return  # looked enough for one claim: not held, the next claim looks on
    # Every due job left is under a key at its limit (or there is none). A token comes
    # back on its own: look again then; a slot comes back when a run ends.
    waits = [_until_token(limits, look.buckets[key]) for key in empty if key in look.buckets]
    if waits:
        look.held = min(waits)
    elif full:
        look.held = math.inf
    else:
        look.drained = True


def _load_buckets(
    storage: SQLStorage, cur: Any, look: _Look, keys: Iterable[str], now: datetime
) -> None:
    """Read (and refill) the buckets of rate ``keys`` not read yet; a key without a row
    has a full bucket."""
    d = storage.dialect
    wanted = sorted({key for key in keys if key not in look.buckets})
    if not wanted:
        return
    params = {"type": look.limits.job_type, "keys": d.list_param(wanted)}
    for key, tokens, refilled_at in _read(storage, cur, "buckets", params, _BUCKET):
        look.buckets[key] = _Bucket(_refill(look.limits, tokens, d.time_value(refilled_at), now))
    for key in wanted:
        look.buckets.setdefault(key, _Bucket(_refill(look.limits, None, None, now)))


def _prune(storage: SQLStorage, cur: Any, limits: TypeLimits, now: datetime) -> None:
    """Now and then, drop the rate-key buckets of ``limits.job_type`` that are full again
    (untouched for a whole window): a key without a row has a full bucket."""
    if not _prunes.due(storage, limits.job_type, max(_PRUNE_EVERY, limits.per)):
        return
    d = storage.dialect
    before = d.time_param(now - timedelta(seconds=limits.per))
    cur.execute(d.limits_sql["prune_buckets"], {"type": limits.job_type, "before": before})


def _take(
    storage: SQLStorage,
    cur: Any,
    ids: list[str],
    worker_id: str,
    now: Any,
    lock_timeout: float,
) -> list[Job]:
    """Claim the jobs ``ids`` (locked by this transaction) as the plain claim does;
    returns them in dequeue order."""
    if not ids:
        return []
    d = storage.dialect
    sql = d.limits_sql["claim_ids"]
    params: dict[str, Any] = {"worker": worker_id, "now": now, "lock_timeout": lock_timeout}
    if "{ids}" in sql:  # a backend binding each id on its own (see mysql.py)
        sql = sql.replace("{ids}", ", ".join(f"%(id_{i})s" for i in range(len(ids))))
        params.update({f"id_{i}": id_ for i, id_ in enumerate(ids)})
    else:
        params["ids"] = d.list_param(ids)
    cur.execute(sql, params)
    return _jobs(storage, cur, sql, cur.fetchall())


def _jobs(storage: SQLStorage, cur: Any, sql: str, rows: list[Any]) -> list[Job]:
    """The jobs of claimed ``rows`` (just fetched by ``sql``), in dequeue order."""
    if not rows:
        return []
    from .sql import _CLAIMED, _ORDER, _PRIORITY, _RUN_AT  # the claim's row layout

    claimed = storage._named(cur, sql, _CLAIMED, rows)
    claimed.sort(key=lambda r: (-r[_PRIORITY], r[_RUN_AT], r[_ORDER]))
    return [storage._job(row) for row in claimed]


def _spend(storage: SQLStorage, cur: Any, looks: Sequence[_Look], jobs: Sequence[Job]) -> None:
    """Spend a token per run started of each rate-limited type, in its bucket's row."""
    spent: Counter[tuple[str, str]] = Counter()
    rated = {look.limits.job_type: look for look in looks if look.limits.rate is not None}
    for job in jobs:
        look = rated.get(job.type)
        if look is not None:
            key = (job.rate_key or _WHOLE) if look.limits.rate_keyed else _WHOLE
            spent[(job.type, key)] += 1
    if not spent:
        return
    d = storage.dialect
    for (job_type, key), n in sorted(spent.items()):
        look = rated[job_type]
        bucket = look.buckets[key]
        row = {
            "type": job_type,
            "limit_key": key,
            "tokens": max(0.0, bucket.tokens - n),
            "refilled_at": d.time_param(d.time_value(look.now)),
        }
        cur.execute(d.limits_sql["save_bucket"], row)
