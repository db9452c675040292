"""Backoff policies: pure functions from a failed run's number to a wait."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.retry import (
    DEFAULT_BACKOFF,
    MAX_DELAY,
    Constant,
    Exponential,
    backoff_from_json,
    delayed,
)


def seconds(policy: jobs.Backoff, attempt: int) -> float:
    return policy.delay(attempt).total_seconds()


def test_default_policy_is_the_documented_exponential() -> None:
    assert DEFAULT_BACKOFF == jobs.exponential() == Exponential(1, 2, 300, 0.1)


def test_exponential_grows_by_factor_from_base() -> None:
    policy = jobs.exponential(base=1, factor=2, max=300, jitter=0)
    assert [seconds(policy, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 64]
    custom = jobs.exponential(base=0.5, factor=3, max=1000, jitter=0)
    assert [seconds(custom, n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]
    flat = jobs.exponential(base=7, factor=1, max=300, jitter=0)
    assert {seconds(flat, n) for n in range(1, 20)} == {7}


def test_exponential_is_capped_at_max() -> None:
    policy = jobs.exponential(base=1, factor=2, max=300, jitter=0)
    assert seconds(policy, 9) == 256
    assert seconds(policy, 10) == 300
    assert seconds(policy, 50) == 300


def test_first_attempts_below_one_do_not_shrink_the_wait() -> None:
    policy = jobs.exponential(base=2, factor=2, max=300, jitter=0)
    assert seconds(policy, 0) == seconds(policy, -5) == seconds(policy, 1) == 2


@pytest.mark.parametrize("attempt", [1_000, 10**6, 10**18, 2**63])
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    assert seconds(jobs.exponential(jitter=0), attempt) == 300
    assert seconds(jobs.exponential(base=1e300, factor=1e10, max=60, jitter=0), attempt) == 60
    with_jitter = seconds(jobs.exponential(max=100, jitter=0.5), attempt)
    assert 50 <= with_jitter <= 100


def test_jitter_stays_within_bounds_and_spreads() -> None:
    random.seed(1234)
    policy = jobs.exponential(base=1, factor=2, max=300, jitter=0.1)
    samples = [seconds(policy, 4) for _ in range(2000)]  # nominal 8 s
    assert all(7.2 <= s <= 8.8 for s in samples)
    assert len(set(samples)) > 1000
    assert min(samples) < 7.4 and max(samples) > 8.6  # the whole range is used


def test_jitter_never_exceeds_max() -> None:
    # max is the longest a job ever waits; jitter spreads the capped waits below it.
    random.seed(99)
    policy = jobs.exponential(base=1, factor=2, max=300, jitter=0.2)
    samples = [seconds(policy, 20) for _ in range(2000)]
    assert all(240 <= s <= 300 for s in samples)
    assert min(samples) < 250


def test_full_jitter_is_never_negative() -> None:
    random.seed(7)
    policy = jobs.exponential(base=10, factor=2, max=300, jitter=1)
    samples = [seconds(policy, 1) for _ in range(2000)]
    assert all(0 <= s <= 20 for s in samples)


def test_constant() -> None:
    assert seconds(jobs.constant(5), 1) == 5
    assert seconds(jobs.constant(5), 100) == 5
    assert seconds(jobs.constant(timedelta(minutes=2)), 3) == 120
    assert seconds(jobs.constant(0), 1) == 0
    assert seconds(jobs.constant(0.25), 1) == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1},
        {"factor": 0.5},
        {"factor": -2},
        {"max": -1},
        {"max": float("inf")},
        {"base": float("nan")},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"base": "1"},
        {"max": None},
        {"jitter": True},
    ],
    ids=repr,
)
def test_exponential_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jobs.exponential(**kwargs)


@pytest.mark.parametrize(
    "value", [-1, float("nan"), float("inf"), "5", None, True, timedelta(seconds=-1)], ids=repr
)
def test_constant_rejects_bad_parameters(value: Any) -> None:
    with pytest.raises(ValueError):
        jobs.constant(value)


@pytest.mark.parametrize(
    "policy",
    [
        jobs.exponential(),
        jobs.exponential(base=0.5, factor=3, max=60, jitter=0),
        jobs.constant(5),
        jobs.constant(timedelta(milliseconds=1500)),
    ],
    ids=repr,
)
def test_json_round_trip(policy: jobs.Backoff) -> None:
    data = policy.to_json()
    assert isinstance(data, bytes)
    rebuilt = backoff_from_json(data)
    assert rebuilt == policy
    assert type(rebuilt) is type(policy)


def test_constant_round_trip_keeps_the_wait() -> None:
    rebuilt = backoff_from_json(jobs.constant(1.5).to_json())
    assert isinstance(rebuilt, Constant)
    assert seconds(rebuilt, 9) == 1.5


@pytest.mark.parametrize(
    "data",
    [
        b'{"kind": "fibonacci"}',
        b'{"kind": ["constant"]}',
        b'{"seconds": 5}',
        b'{"kind": "constant"}',
        b'{"kind": "constant", "seconds": 5, "extra": 1}',
        b'{"kind": "exponential", "base": -1}',
        b'{"kind": "constant", "seconds": "5"}',
        b"[1, 2]",
        b'"constant"',
        b"null",
        b"not json",
    ],
    ids=repr,
)
def test_unreadable_policies_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        backoff_from_json(data)


def test_waits_beyond_a_year_are_refused_when_declared() -> None:
    assert timedelta(days=365) == MAX_DELAY
    assert seconds(jobs.constant(MAX_DELAY), 1) == MAX_DELAY.total_seconds()
    assert seconds(jobs.exponential(max=MAX_DELAY.total_seconds(), jitter=0), 99) == 365 * 86400
    for make in (
        lambda: jobs.constant(1e14),  # would overflow a datetime when added to now
        lambda: jobs.constant(MAX_DELAY + timedelta(seconds=1)),
        lambda: jobs.exponential(max=1e14),
        lambda: jobs.RetryAfter(1e14),
        lambda: jobs.RetryAfter(timedelta.max),
        lambda: jobs.RetryAfter(float("inf")),
    ):
        with pytest.raises(ValueError, match="at most"):
            make()
    assert jobs.RetryAfter(MAX_DELAY).delay == MAX_DELAY
    with pytest.raises(ValueError, match="at most"):
        backoff_from_json(b'{"kind": "constant", "seconds": 1e14}')


def test_registering_a_backoff_beyond_a_year_raises(queue: jobs.Queue) -> None:
    with pytest.raises(ValueError, match="at most"):
        queue.register("t", lambda: None, backoff=jobs.constant(1e14))
    assert queue.handler("t") is None


def test_delayed_clamps_instead_of_overflowing() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert delayed(now, timedelta(seconds=5)) == now + timedelta(seconds=5)
    assert delayed(now, timedelta.max) == now + MAX_DELAY
    assert delayed(now, -timedelta(days=1)) == now
    end = datetime(9999, 12, 31, tzinfo=UTC)
    assert delayed(end, timedelta.max) == datetime.max.replace(tzinfo=UTC)
