"""Hostile and broken input, generated: stored and returned unchanged, or refused clearly.

Every property enqueues through the public API on SQLite and PostgreSQL and reads the
job back. Input is either accepted, and then comes back byte for byte, or refused with
``TypeError``/``ValueError`` before anything is written (``enqueue_many`` included). The
fixed hostile strings of the storage suite (tests/storage) are not repeated here.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import durable_jobs as jobs
from durable_jobs import codec
from tests.helpers import wait_for

SRC = Path(__file__).resolve().parents[2] / "src" / "durable_jobs"

# Fast and repeatable: these run in every suite run, twice (one per backend).
PROPERTY = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Any code point, lone surrogates and NUL included.
ANY_CHAR = st.characters(exclude_categories=())
SQL_LIKE = st.sampled_from(
    [
        "'; DROP TABLE sdj_jobs; --",
        "x' OR '1'='1",
        "%(id)s",
        "%s",
        ":id",
        "$1",
        "?",
        "/* */ --",
        "\\'",
        "sdj_jobs WHERE 1=1",
        "') ON CONFLICT DO NOTHING; --",
    ]
)
TEXTS = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    SQL_LIKE,
    st.tuples(SQL_LIKE, st.text(ANY_CHAR, max_size=10)).map("".join),
)
# The JSON data model: what comes back equal after a round trip.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXTS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXTS, children, max_size=5),
    max_leaves=25,
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
INT32 = 2**31 - 1


def count(queue: jobs.Queue) -> int:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM sdj_jobs").scalar_one())


def stored(queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = queue.get_job(job_id)
    assert job is not None
    return job


def storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def refused(queue: jobs.Queue, error: type[Exception], *calls: Any) -> None:
    """Each call raises ``error`` and leaves the jobs table as it was."""
    before = count(queue)
    for call in calls:
        with pytest.raises(error):
            call()
    assert count(queue) == before


@PROPERTY
@given(args=JSON_VALUES)
def test_arguments_round_trip_unchanged(queue: jobs.Queue, args: Any) -> None:
    job = stored(queue, queue.enqueue("t", args))
    assert job.args == codec.dumps(args)
    assert codec.loads(job.args) == args


@PROPERTY
@given(args=JSON_VALUES, bad=NON_FINITE, key=TEXTS)
def test_nan_and_infinity_anywhere_are_refused(
    queue: jobs.Queue, args: Any, bad: float, key: str
) -> None:
    hostile = {key: [args, {"deep": [bad]}]}
    refused(
        queue,
        TypeError,
        lambda: queue.enqueue("t", hostile),
        lambda: queue.enqueue_many([("t", args), ("t", hostile)]),
    )


@PROPERTY
@given(name=TEXTS)
def test_job_names_are_stored_unchanged_or_refused(queue: jobs.Queue, name: str) -> None:
    if 0 < len(name) <= 200 and storable(name):
        assert stored(queue, queue.enqueue(name, name)).type == name
    else:
        refused(
            queue,
            ValueError,
            lambda: queue.enqueue(name),
            lambda: queue.enqueue_many([("t", 1), (name, 2)]),
        )


@PROPERTY
@given(name=TEXTS)
def test_queue_names_are_stored_unchanged_or_refused(queue: jobs.Queue, name: str) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    if name.strip() and len(name) <= 200 and storable(name):
        job_id = queue.enqueue("t", queue=name)
        assert stored(queue, job_id).queue == name
        # The name is only ever a bound parameter: claiming by it finds exactly this job.
        assert [job.id for job in storage.claim(name, name, 10)] == [job_id]
    else:
        refused(
            queue,
            ValueError,
            lambda: queue.enqueue("t", queue=name),
            lambda: queue.enqueue_many([("t", 1), ("t", 2, {"queue": name})]),
        )


@PROPERTY
@given(priority=st.integers(), retries=st.integers())
def test_priority_and_retries_are_stored_or_refused(
    queue: jobs.Queue, priority: int, retries: int
) -> None:
    if abs(priority) <= INT32 and 0 <= retries <= INT32:
        job = stored(queue, queue.enqueue("t", priority=priority, retries=retries))
        assert (job.priority, job.max_retries) == (priority, retries)
    else:
        refused(queue, ValueError, lambda: queue.enqueue("t", priority=priority, retries=retries))


@PROPERTY
@given(delay=st.floats() | st.integers() | st.timedeltas())
def test_delays_are_kept_or_refused(queue: jobs.Queue, delay: float | timedelta) -> None:
    before, jobs_before = datetime.now(UTC), count(queue)
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    try:
        job_id = queue.enqueue("t", delay=delay)
    except ValueError:
        assert count(queue) == jobs_before
        # Refused when negative or when there is no such moment to run at.
        assert not (0 <= seconds < 10 * 365 * 86400), f"a usable delay was refused: {delay!r}"
        return
    assert math.isfinite(seconds) and seconds >= 0, f"accepted delay {delay!r}"
    run_at = stored(queue, job_id).run_at
    assert run_at is not None
    expected = before + timedelta(seconds=seconds)
    assert abs(run_at - expected) < timedelta(seconds=5)


@PROPERTY
@given(options=st.dictionaries(TEXTS, st.integers(), min_size=1, max_size=3))
def test_unknown_options_are_refused(queue: jobs.Queue, options: dict[str, int]) -> None:
    known = {"priority", "retries", "queue", "backoff", "delay", "at", "connection"}
    unknown = {k: v for k, v in options.items() if k not in known}
    if unknown:
        refused(queue, ValueError, lambda: queue.enqueue("t", **unknown))


# Cron fields and near misses; the last two are Arabic-Indic digits, which int() accepts.
CRON_TOKENS = st.sampled_from(
    ["*", "*/5", "1-5", "0", "59", "60", "-1", "7", "L", "W", "#", "?", "1#2", "MON", "sun-sat",
     "jan-dec", "JAN,FEB", ",", "-", "/", "1/0", "*/0", "0-0", "5-1", "99999999999999999999",
     "@daily", "@reboot", "\x00", "\ud800", "'; --", "\u0663", "\u0661-\u0665"]
)  # fmt: skip


@PROPERTY
@given(
    expr=st.lists(CRON_TOKENS, max_size=7).map(" ".join) | st.text(ANY_CHAR, max_size=30),
    tz=st.none() | st.sampled_from(["UTC", "Europe/Paris", "../../etc/passwd", "", "X"]) | TEXTS,
)
def test_cron_strings_make_a_schedule_or_a_value_error(expr: str, tz: str | None) -> None:
    try:
        schedule = jobs.cron(expr, tz=tz) if tz is not None else jobs.cron(expr)
    except ValueError as exc:
        assert str(exc)  # a message that says what is wrong
        return
    start = datetime(2030, 1, 1, tzinfo=UTC)
    fire = schedule.next_after(start)
    assert fire > start
    assert schedule.next_after(fire) > fire


# -- the payload limit ---------------------------------------------------------------------


def test_arguments_over_the_payload_limit_are_refused(queue: jobs.Queue) -> None:
    assert queue.max_payload == 1024 * 1024
    big = "x" * (1024 * 1024)  # encodes to two bytes more: the quotes
    refused(
        queue,
        ValueError,
        lambda: queue.enqueue("t", big),
        lambda: queue.enqueue_many([("t", 1), ("t", big)]),
        lambda: queue.schedule("s", jobs.every(minutes=5), args=big),
    )
    with pytest.raises(ValueError, match=r"1,048,578 bytes.*limit of 1,048,576"):
        queue.enqueue("t", big)
    fits = "é" * ((1024 * 1024 - 2) // 6)  # \u00e9: six bytes each once encoded
    assert codec.loads(stored(queue, queue.enqueue("t", fits)).args) == fits


def test_the_payload_limit_is_set_per_queue(storage: jobs.SQLStorage) -> None:
    small = jobs.Queue(storage, max_payload=100)
    refused(small, ValueError, lambda: small.enqueue("t", "x" * 99))
    assert small.enqueue("t", "x" * 98)
    unlimited = jobs.Queue(storage, max_payload=None)
    huge = "y" * (3 * 1024 * 1024)
    assert codec.loads(stored(unlimited, unlimited.enqueue("t", huge)).args) == huge
    for bad in (0, -1, True, 1.5, "1"):
        with pytest.raises(ValueError, match="max_payload"):
            jobs.Queue(storage, max_payload=bad)  # type: ignore[arg-type]


def test_nesting_too_deep_to_encode_is_refused(queue: jobs.Queue) -> None:
    deep: Any = None
    for _ in range(100_000):
        deep = [deep]
    refused(queue, TypeError, lambda: queue.enqueue("t", deep))
    nested: Any = "bottom"
    for _ in range(200):
        nested = {"k": [nested]}
    assert codec.loads(stored(queue, queue.enqueue("t", nested)).args) == nested


# -- nothing from the database is ever executed ---------------------------------------------


def test_a_job_type_naming_python_code_is_never_imported_or_run(queue: jobs.Queue) -> None:
    names = ["os.system", "os:system", "builtins.eval", "__import__('os').system('true')"]
    ids = [queue.enqueue(name, "touch /tmp/sdj-pwned") for name in names]
    with queue.worker(lock_timeout=1, poll_interval=0.05):
        wait_for(lambda: all(stored(queue, i).status == jobs.JobStatus.FAILED for i in ids))
    for job_id, name in zip(ids, names, strict=True):
        error = stored(queue, job_id).last_error or ""
        assert "no handler registered" in error and repr(name) in error


def test_the_library_never_unpickles_evaluates_or_imports_stored_data() -> None:
    # Stored data is JSON decoded by json.loads, and job types are looked up in the
    # registry of handlers. Nothing may turn text from the database into code.
    forbidden = re.compile(
        r"\b(pickle|cPickle|marshal|shelve|dill|yaml\.load|eval|exec|__import__|"
        r"import_module|pydoc\.locate|runpy)\b"
    )
    # The command line imports the user's application from its own argument (APP), and
    # the Django dashboard the session engine its project's settings name (as Django's
    # own session middleware does).
    allowed = {("cli/loader.py", "import_module"), ("contrib/django/asgi.py", "import_module")}
    found = [
        (path.relative_to(SRC).as_posix(), match.group(1), number)
        for path in SRC.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if not line.lstrip().startswith("#")
        for match in forbidden.finditer(line)
    ]
    unexpected = [f for f in found if (f[0], f[1]) not in allowed]
    assert not unexpected, f"code-from-data risks: {unexpected}"
