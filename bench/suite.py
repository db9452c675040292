"""The list of workloads, what each needs measured beside it, and the loop that runs them."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import control_workloads as cw
from . import limits_workloads as lw
from . import ops_workloads as ow
from . import process_workloads as pw
from . import waiting_workloads as ww
from . import workloads as w
from .report import Result, number
from .sizes import Sizes

__all__ = ["WORKLOADS", "Workload", "run", "select"]


@dataclass(frozen=True)
class Workload:
    """A named measurement; ``needs`` are workloads its ratios are computed against."""

    name: str
    run: Callable[[str, Sizes], Result]
    about: str
    needs: tuple[str, ...] = ()


WORKLOADS = (
    Workload("claim-ceiling", w.claim_ceiling, "reference: bare claim-and-complete loop"),
    Workload("enqueue", w.enqueue_one_at_a_time, "enqueue one at a time, and the bare INSERT loop"),
    Workload("enqueue-many", w.enqueue_many, "one enqueue_many call"),
    Workload("drain", w.drain_in_process, "drain, in-process worker", ("claim-ceiling",)),
    Workload(
        "drain-processes",
        pw.drain_processes,
        "drain by 1 and by 2 sdj worker processes",
        ("claim-ceiling",),
    ),
    Workload(
        "drain-big-table",
        w.drain_big_table,
        "drain with a big backlog in the table, and the claim's plan",
        ("claim-ceiling", "drain"),
    ),
    Workload("workflows", w.workflows, "workflows of 5 durable calls"),
    Workload("fan-out", ww.fan_out, "one parent fans out 10k no-op children, and the drain"),
    Workload("sleep-lateness", ww.sleep_lateness, "how late jobs.sleep(0.05) resumes"),
    Workload("signal-latency", ww.signal_latency, "signal to the start of the run it resumes"),
    Workload("unique-enqueue", cw.unique_enqueue, "enqueue with a unique key, and a plain one"),
    Workload(
        "limits-drain",
        lw.limits_drain,
        "drains of a capped and of a rate-limited type against the plain drain",
    ),
    Workload("list-jobs", ow.list_jobs_big_table, "list_jobs first pages, filtered, big table"),
    Workload(
        "prune-while-draining",
        ow.prune_while_draining,
        "prune a big table of finished jobs while a worker drains; the drain's longest stall",
    ),
    Workload("latency-same-process", w.latency_same_process, "idle latency, in-process worker"),
    Workload("latency-other-process", pw.latency_other_process, "idle latency, worker process"),
    Workload("memory", pw.worker_memory, "worker process RSS at rest and its growth"),
)


def select(only: str | None) -> list[Workload]:
    """The workloads whose name contains ``only`` (all if None; just the one if it is a
    whole name), with what they need."""
    if only is None:
        return list(WORKLOADS)
    by_name = {wl.name: wl for wl in WORKLOADS}
    only = only.lower()
    wanted = {only} if only in by_name else {wl.name for wl in WORKLOADS if only in wl.name}
    pending = list(wanted)
    while pending:
        for need in by_name[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    return [wl for wl in WORKLOADS if wl.name in wanted]


def run(backends: Sequence[str], sizes: Sizes, chosen: Sequence[Workload]) -> list[Result]:
    """Run ``chosen`` on each backend; a workload that raises is recorded, not fatal.

    Progress goes to stderr, so that stdout holds only the report.
    """
    results = []
    for backend in backends:
        for workload in chosen:
            print(f"[{backend}] {workload.name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                result = workload.run(backend, sizes)
            except Exception as exc:
                traceback.print_exc()
                result = Result(backend, workload.name, error=f"{type(exc).__name__}: {exc}")
            took = time.monotonic() - began
            shown = ", ".join(f"{f.label} {number(f.value)} {f.unit}" for f in result.figures)
            print(
                f"[{backend}] {workload.name}: {shown or 'FAILED'} ({took:.1f} s)", file=sys.stderr
            )
            results.append(result)
    return results
