"""The scheduler's fire-time arithmetic, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

import durable_jobs as jobs
from durable_jobs.scheduler import Scheduler, _latest_fire

SCHEDULES = [
    jobs.every(minutes=7, seconds=3),
    jobs.every(minutes=5),
    jobs.daily(9, 0, tz="Europe/Paris"),
    jobs.weekly("sun", 2, 30, tz="America/New_York"),
    jobs.cron("*/15 9-17 * * 1-5", tz="Europe/Paris"),
    jobs.cron("* * 1 * *"),  # dense on one day, absent the rest of the month
]


@settings(max_examples=100, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)),
    late=st.timedeltas(timedelta(0), timedelta(days=40)),
)
def test_latest_fire_is_the_last_fire_time_at_or_before_now(
    schedule: jobs.Schedule, start: datetime, late: timedelta
) -> None:
    first = schedule.next_after(start)
    now = first + late
    expected = first
    while (following := schedule.next_after(expected)) <= now:
        expected = following
    assert _latest_fire(schedule, first, now) == expected


def test_latest_fire_after_years_of_downtime_is_cheap() -> None:
    calls = 0

    class Counting(jobs.Schedule):
        def next_after(self, dt: datetime) -> datetime:
            nonlocal calls
            calls += 1
            return jobs.every(seconds=1).next_after(dt)

        @property
        def spec(self) -> str:
            return "counting"

    first = datetime(2020, 1, 1, tzinfo=UTC)
    now = first + timedelta(days=3 * 365, microseconds=1)
    assert _latest_fire(Counting(), first, now) == first + timedelta(days=3 * 365)
    assert calls < 100  # not one per missed second (~95 million)


def test_without_schedules_nothing_is_ever_due() -> None:
    scheduler = Scheduler(jobs.Queue("sqlite://"))
    assert scheduler.next_due() is None
    assert scheduler.seconds_until_due(at_most=0.25) == 0.25
