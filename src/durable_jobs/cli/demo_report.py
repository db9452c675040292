"""What ``sdj demo`` expects to happen, the checks of it, and the summary it prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ..job import Job, JobStatus
from . import render

if TYPE_CHECKING:
    from .demo import DemoResult

__all__ = ["ORDER", "Check", "checks", "print_summary"]

ORDER = {"id": 1042, "items": ["lamp", "rug"]}
WORKFLOW_RESULT = {"reservation": "reservation-1042", "invoice": "invoice-1042.pdf"}
#: How often each workflow step should run: the step interrupted by the kill runs twice,
#: the one before it is replayed from its checkpoint instead of running again.
STEP_RUNS = {"reserve-stock": 1, "render-invoice": 2, "send-confirmation": 1}
MIN_TICKS = 2
REMINDER_DELAY = timedelta(seconds=2)

# What each job type of the demo shows, for the summary.
ROLES = {
    "thumbnail": "plain jobs",
    "flaky-api": "fails twice, retried with backoff",
    "import-file": "raises NoRetry: fails at once",
    "reminder": "delayed by 2 s",
    "process-order": "3-step workflow, its worker SIGKILLed",
    "tick": "every(seconds=1) schedule",
}


@dataclass(frozen=True)
class Check:
    """One documented behaviour and whether the demo saw it."""

    label: str
    ok: bool
    seen: str


def checks(result: DemoResult) -> list[Check]:
    """Every behaviour the demo promises, checked against what happened."""
    jobs = result.jobs
    return [
        _thumbnails(jobs.get("thumbnail", [])),
        _flaky(jobs.get("flaky-api", [])),
        _no_retry(jobs.get("import-file", [])),
        _reminder(jobs.get("reminder", [])),
        _killed(result),
        _workflow(jobs.get("process-order", [])),
        _steps(result.runs),
        _ticks(jobs.get("tick", [])),
        _drained(result),
        _deregistered(result),
        Check("finished before the deadline", not result.timed_out, f"{result.elapsed:.1f}s"),
    ]


def _one(found: Sequence[Job]) -> Job | None:
    return found[0] if len(found) == 1 else None


def _state(job: Job | None) -> str:
    return "missing" if job is None else f"{job.status.value} after {job.attempt} run(s)"


def _thumbnails(found: Sequence[Job]) -> Check:
    ok = bool(found) and all(j.status is JobStatus.COMPLETED and j.attempt == 1 for j in found)
    runs = Counter(j.attempt for j in found)
    return Check("plain jobs completed, one run each", ok, f"{len(found)} jobs, runs {dict(runs)}")


def _flaky(found: Sequence[Job]) -> Check:
    job = _one(found)
    ok = job is not None and job.status is JobStatus.COMPLETED and job.attempt == 3
    return Check("flaky job retried twice, then completed", ok, _state(job))


def _no_retry(found: Sequence[Job]) -> Check:
    job = _one(found)
    ok = (
        job is not None
        and job.status is JobStatus.FAILED
        and job.attempt == 1
        and (job.last_error or "").startswith("NoRetry")
    )
    return Check("NoRetry failed the job without retrying", ok, _state(job))


def _reminder(found: Sequence[Job]) -> Check:
    job = _one(found)
    if job is None or job.started_at is None or job.run_at is None:
        return Check("delayed job waited for its run time", False, _state(job))
    waited = job.started_at - job.created_at
    ok = job.status is JobStatus.COMPLETED and job.started_at >= job.run_at
    ok = ok and job.run_at - job.created_at >= REMINDER_DELAY - timedelta(milliseconds=50)
    return Check(
        "delayed job waited for its run time",
        ok,
        f"started {render.duration(waited)} after enqueue",
    )


def _killed(result: DemoResult) -> Check:
    victim = result.killed
    if victim is None:
        return Check("workflow's worker killed mid-step", False, "never saw the step start")
    ok = victim.exit_code == -9
    return Check("workflow's worker killed mid-step", ok, f"{victim.name} exit {victim.exit_code}")


def _workflow(found: Sequence[Job]) -> Check:
    job = _one(found)
    result = None if job is None or job.result is None else render.job_dict(job)["result"]
    # Two runs: the one lost with the killed worker, then the resumed one.
    ok = (
        job is not None
        and job.status is JobStatus.COMPLETED
        and job.attempt == 2
        and result == WORKFLOW_RESULT
    )
    return Check("workflow resumed on another worker and completed", ok, _state(job))


def step_runs(runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many times each workflow step executed."""
    counted = Counter(run["step"] for run in runs if run["event"] == "step")
    return {step: counted.get(step, 0) for step in STEP_RUNS}


def _steps(runs: Sequence[dict[str, Any]]) -> Check:
    seen = step_runs(runs)
    ok = seen == STEP_RUNS
    shown = ", ".join(f"{step} x{n}" for step, n in seen.items())
    return Check("finished steps replayed from checkpoints, not re-run", ok, shown)


def _ticks(found: Sequence[Job]) -> Check:
    completed = sum(j.status is JobStatus.COMPLETED for j in found)
    return Check("schedule fired", completed >= MIN_TICKS, f"{completed} runs completed")


def _drained(result: DemoResult) -> Check:
    stopped = [w for w in result.workers if w is not result.killed]
    codes = {w.name: w.exit_code for w in stopped}
    ok = bool(stopped) and all(code == 0 for code in codes.values())
    return Check("workers drained and exited 0 on SIGTERM", ok, str(codes))


def _deregistered(result: DemoResult) -> Check:
    stopped = [w.name for w in result.workers if w is not result.killed]
    ok = bool(stopped) and not result.left_registered
    if result.left_registered:
        seen = f"still listed after exiting: {', '.join(result.left_registered)}"
    else:
        seen = f"{', '.join(stopped)} removed their rows"
    if result.forgotten:
        seen += f"; the demo removed {', '.join(result.forgotten)}'s (killed)"
    return Check("stopped workers deregistered (none left counted as live)", ok, seen)


# --- summary --------------------------------------------------------------------------


def print_summary(out: Console, result: DemoResult, found: Sequence[Check]) -> None:
    """The tables: jobs by type, workflow steps, totals, and the checks."""
    out.print(_jobs_table(result.jobs))
    out.print(_steps_table(result.runs))
    out.print(_totals(result))
    out.print(_checks_table(found))


def _jobs_table(jobs: dict[str, list[Job]]) -> Table:
    table = Table(title="jobs", title_justify="left")
    for name in ("TYPE", "SHOWS", "JOBS", "STATUS", "RUNS"):
        table.add_column(name)
    for job_type, role in ROLES.items():
        found = jobs.get(job_type, [])
        statuses = Counter(j.status for j in found)
        runs = Counter(j.attempt for j in found)
        table.add_row(
            job_type,
            role,
            str(len(found)),
            ", ".join(f"{n} {render.status_text(s)}" for s, n in statuses.items()),
            ", ".join(f"{n}x{attempt}" if n > 1 else str(attempt) for attempt, n in runs.items()),
        )
    return table


def _steps_table(runs: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="workflow steps (process-order)", title_justify="left")
    for name in ("STEP", "EXECUTIONS", "EXPECTED"):
        table.add_column(name)
    for step, count in step_runs(runs).items():
        table.add_row(step, str(count), str(STEP_RUNS[step]))
    return table


def _totals(result: DemoResult) -> str:
    everything = [job for found in result.jobs.values() for job in found]
    statuses = Counter(job.status.value for job in everything)
    retries = sum(max(0, job.attempt - 1) for job in everything)
    finished = sum(job.status.is_terminal for job in everything)
    rate = finished / result.elapsed if result.elapsed else 0.0
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    return (
        f"{len(everything)} jobs ({counts}); {retries} retries; "
        f"{finished} finished in {result.elapsed:.1f}s ({rate:.1f} jobs/s)"
    )


def _checks_table(found: Sequence[Check]) -> Table:
    table = Table(title="checks", title_justify="left")
    for name in ("", "BEHAVIOUR", "SEEN"):
        table.add_column(name)
    for check in found:
        table.add_row("[green]✓[/]" if check.ok else "[red]✗[/]", check.label, check.seen)
    return table
