"""``sdj demo``: a mixed workload on real worker processes, one of them killed mid-step.

The demo enqueues plain jobs, a flaky job, a ``NoRetry``, a delayed job and a
three-step workflow, and declares an ``every`` schedule (see ``demo_app``). It starts
``sdj worker`` processes, SIGKILLs the one running the workflow in the middle of its
slow step, starts another that resumes from the checkpoint, then prints what happened
and checks it against what the library documents (``demo_report``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import durable_jobs as jobs

from ..job import Job, JobStatus, utcnow
from ..storage import SQLStorage
from ..storage.admin import Admin
from ..storage.urls import masked
from . import demo_report, render
from .database import open_storage
from .errors import CLIError

__all__ = ["DemoResult", "DemoRun", "WorkerProcess", "demo"]

#: The whole demo must end by then; it normally takes about ten seconds.
DEADLINE_SECONDS = 45.0
LOCK_TIMEOUT = 2.0
THUMBNAILS = 20
_POLL = 0.1
#: Any heartbeat age: to find every row the demo's workers left.
_EVER = timedelta(days=3650)
_APP = "durable_jobs.cli.demo_app:queue"


def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            file_okay=False,
            help="Where the demo keeps its database and logs (kept afterwards). "
            "Default: a temporary directory, removed when the demo passes.",
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Run on this database instead of a SQLite file in the directory. "
            "$SDJ_DATABASE_URL is ignored here on purpose.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show the library at work, then check it behaved as documented (exit 1 if not)."""
    _require_features()
    workdir = directory or Path(tempfile.mkdtemp(prefix="sdj-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{workdir / 'demo.db'}"
    out = render.console()
    out.print(f"[bold]sdj demo[/] {_where(url, workdir, database_url, directory)}")
    result = DemoRun(url, workdir, out).run()
    checks = demo_report.checks(result)
    demo_report.print_summary(out, result, checks)
    if not all(check.ok for check in checks):
        # Kept, whatever the default: the logs are what explains a failure.
        raise CLIError(f"the demo did not behave as documented; its logs are kept in {workdir}")
    if directory is None:
        shutil.rmtree(workdir, ignore_errors=True)


def _where(url: str, workdir: Path, database_url: str | None, directory: Path | None) -> str:
    """Where the demo runs, naming a folder only if it is kept afterwards."""
    database = f"on {masked(url)}" if database_url else "on a SQLite database"
    kept = "worker logs" if database_url else "database and worker logs"
    if directory is not None:
        return f"{database}  ({kept} kept in {workdir})"
    return (
        f"{database}  ({kept} in a temporary folder, removed afterwards unless a check "
        "fails; --dir DIR keeps them)"
    )


def _require_features() -> None:
    # The demo exists to show these; without them it must fail, not quietly skip them.
    features = {"call": "durable calls", "every": "schedules"}
    missing = [
        f"{feature} (jobs.{name})" for name, feature in features.items() if not hasattr(jobs, name)
    ]
    if missing:
        raise CLIError(
            f"this build of durable_jobs lacks {' and '.join(missing)}; the demo needs them"
        )


@dataclass
class WorkerProcess:
    """An ``sdj worker`` process started by the demo."""

    name: str
    queues: str
    process: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class DemoResult:
    """What the demo observed, for the report."""

    jobs: dict[str, list[Job]]
    runs: list[dict[str, Any]]
    workers: list[WorkerProcess]
    killed: WorkerProcess | None
    elapsed: float
    timed_out: bool
    #: Names of the stopped workers still listed in ``sdj_workers`` after they exited
    #: (a worker removes its own row when it stops cleanly).
    left_registered: list[str] = field(default_factory=list)
    #: Names of the workers whose rows the demo removed: the one it SIGKILLed, which
    #: could not do it itself.
    forgotten: list[str] = field(default_factory=list)


class DemoRun:
    """One run of the demo against ``url``, with worker logs in ``workdir``."""

    def __init__(self, url: str, workdir: Path, console: Console) -> None:
        self.url = url
        self.workdir = workdir
        self.console = console
        self.workers: list[WorkerProcess] = []
        self.killed: WorkerProcess | None = None
        self._logs: list[IO[bytes]] = []

    def run(self) -> DemoResult:
        """Enqueue, run, kill, resume, stop; returns what happened."""
        from . import demo_app

        os.environ["SDJ_DEMO_DIR"] = str(self.workdir)
        (self.workdir / demo_app.RUNS_FILE).unlink(missing_ok=True)
        with open_storage(self.url, create=True) as storage:
            ids = self._enqueue(demo_app.build_queue(storage))
            self.console.print(
                f"enqueued {sum(map(len, ids.values()))} jobs: {THUMBNAILS} thumbnails, a flaky "
                "API call, a bad file import (NoRetry), a delayed reminder and a 3-step "
                "order workflow; a tick schedule fires every second"
            )
            started, started_at = time.monotonic(), utcnow()
            try:
                self._start_worker(f"{demo_app.QUEUE}=8", scheduler=True)
                victim = self._start_worker(f"{demo_app.WORKFLOW_QUEUE}=1")
                self.console.print(
                    f"started worker 1 for queue {demo_app.QUEUE} with the scheduler and "
                    f"worker 2 for queue {demo_app.WORKFLOW_QUEUE}, each an `sdj worker` process"
                )
                timed_out = not self._watch(storage, ids, victim)
            finally:
                self._stop_workers()
            elapsed = time.monotonic() - started
            left_registered, forgotten = self._deregister(storage)
            by_type: dict[str, list[Job]] = {}
            admin = Admin(storage)
            for job in admin.get_jobs([i for group in ids.values() for i in group]):
                by_type.setdefault(job.type, []).append(job)
            ticks = admin.jobs_page(job_type="tick", queue=demo_app.QUEUE, limit=1000).jobs
            by_type["tick"] = [job for job in ticks if job.created_at >= started_at]
        return DemoResult(
            jobs=by_type,
            runs=demo_app.read_runs(self.workdir),
            workers=self.workers,
            killed=self.killed,
            elapsed=elapsed,
            timed_out=timed_out,
            left_registered=left_registered,
            forgotten=forgotten,
        )

    def _enqueue(self, queue: jobs.Queue) -> dict[str, list[str]]:
        return {
            "process-order": [queue.enqueue("process-order", demo_report.ORDER)],
            "thumbnail": queue.enqueue_many([("thumbnail", n) for n in range(THUMBNAILS)]),
            "flaky-api": [queue.enqueue("flaky-api")],
            "import-file": [queue.enqueue("import-file", "photo.jpg")],
            "reminder": [queue.enqueue("reminder", "stand up and stretch", delay=2)],
        }

    # -- worker processes -----------------------------------------------------------------

    def _start_worker(self, queues: str, *, scheduler: bool = False) -> WorkerProcess:
        name = f"worker {len(self.workers) + 1}"
        argv = [sys.executable, "-m", "durable_jobs.cli", "worker", _APP, "--queues", queues]
        argv += ["--lock-timeout", str(LOCK_TIMEOUT), "--database-url", self.url]
        if scheduler:
            argv.append("--scheduler")
        log = self.workdir / f"{name.replace(' ', '-')}.log"
        output = log.open("wb")
        self._logs.append(output)
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        worker = WorkerProcess(name, queues, process, log)
        self.workers.append(worker)
        return worker

    def _kill(self, worker: WorkerProcess) -> None:
        os.kill(worker.pid, signal.SIGKILL)
        worker.exit_code = worker.process.wait()
        self.killed = worker

    def _deregister(self, storage: SQLStorage) -> tuple[list[str], list[str]]:
        """Remove the killed worker's row from ``sdj_workers``, so that nothing counts it
        as live after the demo; returns the names of the workers that stopped cleanly
        but are still listed (there should be none), and of those removed here."""
        host = socket.gethostname()
        rows = [w for w in storage.live_workers(_EVER) if w.host == host]
        left: list[str] = []
        forgotten: list[str] = []
        for worker in self.workers:
            ids = [row.id for row in rows if row.pid == worker.pid]
            if not ids:
                continue
            # A cleanly stopped worker left behind is a bug the report shows; its row
            # goes too, so that nothing lists it as live after the demo either way.
            (forgotten if worker is self.killed else left).append(worker.name)
            for worker_id in ids:
                storage.remove_worker(worker_id)
        if forgotten:
            self.console.print(
                f"removed the record of {' and '.join(forgotten)} (SIGKILLed, so it could not "
                "deregister itself); the stopped workers deregistered on their way out"
            )
        return left, forgotten

    def _stop_workers(self) -> None:
        """SIGTERM every live worker and wait for it to drain (SIGKILL if it hangs)."""
        alive = [w for w in self.workers if w.exit_code is None]
        for worker in alive:
            worker.process.send_signal(signal.SIGTERM)
        for worker in alive:
            try:
                worker.exit_code = worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.exit_code = worker.process.wait()
        for output in self._logs:
            output.close()

    # -- watching -------------------------------------------------------------------------

    def _watch(self, storage: SQLStorage, ids: dict[str, list[str]], victim: WorkerProcess) -> bool:
        """Show progress, kill ``victim`` mid-step, resume; False if the deadline passed."""
        from . import demo_app

        workload = [i for group in ids.values() for i in group]
        admin = Admin(storage)
        replacement: WorkerProcess | None = None
        resumed = False
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as progress:
            say = progress.console.print
            task = progress.add_task("starting workers", total=len(workload))
            deadline = time.monotonic() + DEADLINE_SECONDS
            while time.monotonic() < deadline:
                statuses = [job.status for job in admin.get_jobs(workload)]
                runs = demo_app.read_runs(self.workdir)
                ticks = sum(run["event"] == "tick" for run in runs)
                done = sum(status.is_terminal for status in statuses)
                progress.update(task, completed=done, description=_describe(statuses, ticks))
                if replacement is None and _ran(runs, "step", victim.pid, step="render-invoice"):
                    self._kill(victim)
                    replacement = self._start_worker(victim.queues)
                    say(
                        f"[red]killed {victim.name}[/] (pid {victim.pid}) with SIGKILL in the "
                        f"middle of step render-invoice; started {replacement.name}"
                    )
                if replacement and not resumed and _ran(runs, "workflow", replacement.pid):
                    resumed = True
                    say(
                        f"{replacement.name} took the workflow back after the {LOCK_TIMEOUT:g}s "
                        "lock timeout and resumed it from its last checkpoint"
                    )
                # The workflow alone takes several seconds, long enough for a 1 s schedule
                # to fire repeatedly: the report checks that it did.
                if done == len(workload) and resumed:
                    return True
                time.sleep(_POLL)
        return False


def _ran(runs: list[dict[str, Any]], event: str, pid: int, **fields: Any) -> bool:
    """Whether process ``pid`` recorded ``event`` (with ``fields``)."""
    return any(
        run["event"] == event and run["pid"] == pid and fields.items() <= run.items()
        for run in runs
    )


def _describe(statuses: list[JobStatus], ticks: int) -> str:
    counts = {status: statuses.count(status) for status in JobStatus if status in statuses}
    shown = ", ".join(f"{n} {render.status_text(s)}" for s, n in counts.items())
    return f"{shown}; schedule fired {ticks}x"
