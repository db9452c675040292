"""Workloads of job types with fleet-wide limits: drains of a capped type and of a
rate-limited type, each against the plain drain of the same jobs measured in the same
run, on the same backend, by the same in-process worker, on fresh databases.

The limits are set where they are not the bottleneck, so that the ratios show what the
limited claim costs:

- the rate limit is far above any drain's rate, and the drains run no-op jobs with the
  ``drain`` workload's concurrency;
- the cap (``concurrency=5``) is the worker's own concurrency on the queue. A claimed
  job counts as running, so a capped type is never claimed ahead of its cap: each slot
  waits for one commit (its outcome's, which claims its next job) between runs. With
  jobs that run ``WORK`` seconds, that commit is not what bounds the drain; with no-op
  jobs it is, and the no-op capped drain beside them shows by how much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median
from typing import Any

from .database import database, queue_on
from .report import Figure, Result
from .sizes import CONCURRENCY, Sizes, count, drain_timeout
from .workloads import _Completions

__all__ = ["limits_drain"]

#: The capped type's ``concurrency``, and the worker's concurrency in its drains.
CAP = 5
#: A rate limit no drain comes near.
RATE = "1000000/s"
#: How long each job of the capped drains runs (seconds).
WORK = 0.02


def limits_drain(backend: str, sizes: Sizes) -> Result:
    """Drains of ``sizes.limits_drain`` jobs, plain and limited in turn (the median of
    ``sizes.drain_rounds`` each): ``WORK``-second jobs plain and capped at the worker's
    concurrency; no-op jobs plain, rate-limited and capped."""
    n = sizes.limits_drain
    plain_work: list[float] = []
    capped_work: list[float] = []
    plain: list[float] = []
    rated: list[float] = []
    capped: list[float] = []
    for _ in range(sizes.drain_rounds):
        plain_work.append(_drain(backend, n, {}, WORK, CAP))
        capped_work.append(_drain(backend, n, {"concurrency": CAP}, WORK, CAP))
        plain.append(_drain(backend, n, {}, 0.0, CONCURRENCY))
        rated.append(_drain(backend, n, {"rate_limit": RATE}, 0.0, CONCURRENCY))
        capped.append(_drain(backend, n, {"concurrency": CAP}, 0.0, CONCURRENCY))
    jobs_n = count(n)
    work = f"{WORK * 1000:g} ms jobs, c={CAP}"
    noop = f"no-op, c={CONCURRENCY}"
    return Result(
        backend,
        "limits-drain",
        [
            Figure(
                "ref.limits.work", f"plain drain {jobs_n}, {work}", median(plain_work), "jobs/s"
            ),
            Figure(
                "limits.capped",
                f"capped drain {jobs_n}, concurrency={CAP}, {work}",
                median(capped_work),
                "jobs/s",
                "ref.limits.work",
            ),
            Figure("ref.limits.noop", f"plain drain {jobs_n}, {noop}", median(plain), "jobs/s"),
            Figure(
                "limits.rated",
                f'rate-limited drain {jobs_n}, rate_limit="{RATE}", {noop}',
                median(rated),
                "jobs/s",
                "ref.limits.noop",
            ),
            Figure(
                "limits.capped.noop",
                f"capped drain {jobs_n}, concurrency={CAP}, {noop} (the cap binds)",
                median(capped),
                "jobs/s",
                "ref.limits.noop",
            ),
        ],
    )


def _drain(backend: str, n: int, options: dict[str, Any], work: float, concurrency: int) -> float:
    """Jobs/s of an in-process worker (``concurrency`` on its queue) draining ``n`` jobs
    of a type registered with ``options``, each running ``work`` seconds, stored
    beforehand; timed from the worker's start to the ``n``-th committed completion."""
    with database(backend) as url:
        with queue_on(url) as queue:
            queue.enqueue_many([("job", None)] * n)
        with queue_on(url) as queue:
            queue.register("job", _handler(work), **options)
            completions = _Completions(queue, n, "job")
            start = time.perf_counter()
            with queue.worker({"default": concurrency}, poll_interval=0.5):
                completions.wait(drain_timeout(n) + n * work / concurrency)
                elapsed = time.perf_counter() - start
    return n / elapsed


def _handler(work: float) -> Callable[[], None]:
    """A job that runs ``work`` seconds (sleeping), or a no-op."""
    if not work:
        return lambda: None

    def job() -> None:
        time.sleep(work)

    return job
