"""The dashboard's pages and actions, as endpoints of one ``Dashboard`` object.

Pages gather their data in a worker thread (storage calls block) and render a Jinja2
template with autoescaping, so job data always reaches the browser as inert text. A
page asked for with ``?fragment=1`` renders only its ``live`` block: the part the
browser script re-fetches every few seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import __version__
from ..job import Checkpoint, Job, JobStatus, utcnow
from ..options import check_queue_name
from ..queue import Queue
from ..storage import JobStore
from ..storage.admin import Cursor
from .charts import throughput_chart
from .explain_panel import explain_panel
from .format import FILTERS
from .security import Auth, FormError, allowed, csrf_token, read_form, set_csrf_cookie

__all__ = ["LIVE_WORKER_WINDOW", "Dashboard"]

# A worker heartbeats every lock_timeout / 5; this covers lock timeouts up to 5 minutes.
LIVE_WORKER_WINDOW = timedelta(seconds=60)
PAGE_SIZE = 50

# Messages shown after an action redirects; looked up by key so no text is reflected.
_DONE = {
    "retried": "Job retried: it is pending again with its full retry budget.",
    "retried-failed": "Failed jobs retried: they are pending again with their full retry budget.",
    "deleted": "Job deleted.",
    "enqueued": "Job enqueued.",
    "cancelled": "Job cancelled, with its unfinished descendants.",
    "paused": "Job paused: no worker runs it until it is resumed.",
    "resumed": "Job resumed.",
    "queue-paused": "Queue paused: no worker claims from it until it is resumed.",
    "queue-resumed": "Queue resumed.",
}
# The job list's filters (query parameters), and the statuses a job can be retried in.
_JOB_FILTERS = ("status", "queue", "type", "tag", "meta")
_RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.RETRYING})
# Statuses a pause can be asked for in (a paused job has paused_from set).
_PAUSABLE = frozenset({JobStatus.PENDING, JobStatus.RETRYING, JobStatus.RUNNING, JobStatus.WAITING})


@dataclass(frozen=True, slots=True)
class Step:
    """A durable call's checkpoint as the job page shows it."""

    path: str
    checkpoint: Checkpoint
    took: timedelta | None  # since the previous step finished or the run started


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a job's timeline."""

    at: datetime
    what: str
    kind: str  # a CSS class: neutral, ok, bad, step


class Refused(Exception):
    """A request the dashboard answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dashboard:
    """The state behind the app: storage, the optional queue, auth and templates."""

    def __init__(
        self, storage: JobStore, queue: Queue | None, auth: Auth | None, refresh: float
    ) -> None:
        self.storage = storage
        self.queue = queue
        # Enqueues go through a Queue so they are validated and encoded like any other;
        # the user's queue also applies its handlers' registration defaults.
        self.producer = queue or Queue(storage)
        self.admin = storage.admin()
        self.auth = auth
        self.refresh = refresh
        self._overview_lock = threading.Lock()
        self._overview_cache: tuple[float, dict[str, Any]] | None = None
        self.env = Environment(
            loader=PackageLoader("durable_jobs.dashboard", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)
        self.env.globals["version"] = __version__
        self.env.globals["statuses"] = [s.value for s in JobStatus]

    # -- rendering ----------------------------------------------------------------------

    async def render(
        self, request: Request, template: str, data: dict[str, Any], status: int = 200
    ) -> Response:
        """A page, or only its ``live`` block when the browser script asks for a fragment."""
        can_act = await allowed(self.auth, request)
        token, new_token = csrf_token(request) if can_act else ("", False)
        context = {
            "base": base_path(request),
            "can_act": can_act,
            "csrf": token,
            "refresh_ms": int(self.refresh * 1000),
            "now": utcnow(),
            "done": _DONE.get(request.query_params.get("done", "")),
            **data,
        }
        page = self.env.get_template(template)
        if request.query_params.get("fragment") and "live" in page.blocks:
            html = "".join(page.blocks["live"](page.new_context(context)))
        else:
            html = page.render(context)
        response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
        if new_token:
            set_csrf_cookie(response, request, token)
        return response

    async def refused(self, request: Request, error: Refused) -> Response:
        """The error page for a refused request."""
        data = {"page": "error", "status": error.status, "message": error.message}
        return await self.render(request, "error.html", data, status=error.status)

    def redirect(self, request: Request, path: str, **query: str) -> Response:
        """A see-other redirect to a dashboard path (POST -> GET)."""
        url = base_path(request) + path + ("?" + urlencode(query) if query else "")
        return RedirectResponse(url, status_code=303)

    # -- pages --------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """Counts by status and queue, throughput over the last hour, the oldest due job."""
        return await self.render(request, "overview.html", await run_in_threadpool(self._overview))

    def _overview(self) -> dict[str, Any]:
        # The one page whose cost grows with the table (it counts every job): viewers
        # polling at once share one computation per refresh interval.
        with self._overview_lock:
            cached = self._overview_cache
            if cached is not None and time.monotonic() - cached[0] < self.refresh:
                return cached[1]
            data = self._count_overview()
            self._overview_cache = (time.monotonic(), data)
            return data

    def _count_overview(self) -> dict[str, Any]:
        counts = self.admin.counts()
        by_queue: dict[str, dict[str, int]] = {}
        totals = dict.fromkeys((s.value for s in JobStatus), 0)
        for queue, status, count in counts:
            by_queue.setdefault(queue, {})[status.value] = count
            totals[status.value] += count
        paused = self.storage.paused_queues()
        for name in paused:  # shown (to be resumed) even without jobs
            by_queue.setdefault(name, {})
        return {
            "page": "overview",
            "by_queue": dict(sorted(by_queue.items())),
            "paused_queues": paused,
            "totals": totals,
            "chart": throughput_chart(self.admin.throughput()),
            "oldest_due": self.admin.oldest_due(),
            "workers": len(self.storage.live_workers(LIVE_WORKER_WINDOW)),
            "as_of": utcnow(),
        }

    async def jobs(self, request: Request) -> Response:
        """Jobs newest first, filtered by status, queue and type, paged by keyset."""
        q = request.query_params
        try:
            wanted_id = _text(q.get("id", ""))
            filters = {name: _text(q.get(name, "")) for name in _JOB_FILTERS}
            status = JobStatus(filters["status"]) if filters["status"] else None
            meta = _meta_filter(filters["meta"])
            before = Cursor.parse(q["before"]) if q.get("before") else None
            after = None if before else (Cursor.parse(q["after"]) if q.get("after") else None)
        except (Refused, ValueError):
            return await self.refused(request, Refused(400, "bad filter or page cursor"))
        if wanted_id and await run_in_threadpool(self.storage.get_job, wanted_id) is not None:
            return RedirectResponse(job_url(request, wanted_id), status_code=303)
        page = await run_in_threadpool(
            lambda: self.admin.jobs_page(
                status=status,
                queue=filters["queue"] or None,
                job_type=filters["type"] or None,
                tag=filters["tag"] or None,
                meta=meta,
                before=before,
                after=after,
                limit=PAGE_SIZE,
            )
        )
        given = {name: value for name, value in filters.items() if value}
        link = base_path(request) + "/jobs?"
        data = {
            "page": "jobs",
            "jobs": page.jobs,
            "filters": filters,
            "missing_id": wanted_id,
            "first_url": link + urlencode(given) if before or after else None,
            "older_url": link + urlencode({**given, "before": page.older.token()})
            if page.older
            else None,
            "newer_url": link + urlencode({**given, "after": page.newer.token()})
            if page.newer
            else None,
            "known_types": self._known_types(),
            "known_queues": self._known_queues(),
        }
        return await self.render(request, "jobs.html", data)

    async def job(self, request: Request) -> Response:
        """One job: arguments, result, error, attempts, timeline and durable calls."""
        job_id = request.path_params["job_id"]
        if "\x00" in job_id:
            return await self.refused(request, Refused(404, "no such job"))
        data = await run_in_threadpool(self._job, job_id)
        if data is None:
            return await self.refused(request, Refused(404, f"no job with id {job_id!r}"))
        return await self.render(request, "job.html", data)

    def _job(self, job_id: str) -> dict[str, Any] | None:
        job = self.storage.get_job(job_id)
        if job is None:
            return None
        steps = _steps(job, self.storage.get_checkpoints(job_id))
        return {
            "page": "jobs",
            "job": job,
            "explanation": explain_panel(self.producer.explain(job_id)),
            "children": self.admin.children(job_id),
            "progress": None if job.progress is None else json.dumps(job.progress),
            "steps": steps,
            "timeline": _timeline(job, steps),
            "attempts": self.admin.attempts(job_id),
            "retryable": job.status in _RETRYABLE,
            "cancellable": not job.status.is_terminal,
            "pausable": job.status in _PAUSABLE and job.paused_from is None,
            "resumable": job.paused_from is not None and not job.status.is_terminal,
            "deletable": job.status != JobStatus.RUNNING,
        }

    async def schedules(self, request: Request) -> Response:
        """Schedules: spec, queue, last and next run (stored state and this app's queue)."""
        return await self.render(
            request, "schedules.html", await run_in_threadpool(self._schedules)
        )

    def _schedules(self) -> dict[str, Any]:
        stored = self.admin.schedules()
        rows: dict[str, dict[str, Any]] = {}
        for state in stored or []:
            rows[state.name] = {
                "name": state.name,
                "spec": state.spec,
                "queue": state.queue,
                "last_run": state.last_fire_at,
                "next_run": state.next_fire_at,
                "declared": False,
            }
        now = utcnow()
        declared = self.queue.schedules if self.queue else {}
        for name, (schedule, _args, options) in declared.items():
            row = rows.setdefault(
                name,
                {"name": name, "spec": schedule.spec, "last_run": None, "next_run": None},
            )
            row["queue"] = options.get("queue", row.get("queue", "default"))
            row["next_run"] = row["next_run"] or schedule.next_after(now)
            row["declared"] = True
        return {
            "page": "schedules",
            "schedules": [rows[name] for name in sorted(rows)],
            "has_table": stored is not None,
        }

    async def workers(self, request: Request) -> Response:
        """Live workers by heartbeat, each with the jobs it is running."""
        return await self.render(request, "workers.html", await run_in_threadpool(self._workers))

    def _workers(self) -> dict[str, Any]:
        running = self.admin.running_jobs()
        workers = sorted(self.storage.live_workers(LIVE_WORKER_WINDOW), key=lambda w: w.id)
        counts = self.storage.explain_reads().running_by_worker()
        live = {w.id for w in workers}
        return {
            "page": "workers",
            "workers": [(w, [j for j in running if j.locked_by == w.id]) for w in workers],
            "running_counts": counts,
            # Running jobs no live worker owns: the reaper takes them back after the
            # lock timeout. Worth seeing while it has not.
            "orphans": [j for j in running if j.locked_by not in live],
            "window": LIVE_WORKER_WINDOW,
        }

    async def enqueue_form(self, request: Request) -> Response:
        """The form to enqueue a job type with JSON arguments."""
        return await self.render(request, "enqueue.html", self._enqueue_data({}, None))

    def _enqueue_data(self, form: dict[str, str], error: str | None) -> dict[str, Any]:
        return {
            "page": "enqueue",
            "form": {"type": "", "args": "null", "queue": "", "priority": "", "delay": "", **form},
            "error": error,
            "known_types": self._known_types(),
            "known_queues": self._known_queues(),
        }

    def _known_types(self) -> list[str]:
        return sorted(self.queue.job_types) if self.queue else []

    def _known_queues(self) -> list[str]:
        if self.queue is None:
            return []
        names = {"default"}
        for name in self.queue.job_types:
            handler = self.queue.handler(name)
            if handler is not None:
                names.add(handler.defaults.get("queue", "default"))
        return sorted(names)

    # -- actions ------------------------------------------------------------------------

    async def _action_form(self, request: Request) -> dict[str, str]:
        if not await allowed(self.auth, request):
            raise Refused(403, "this dashboard is read-only for you")
        try:
            return await read_form(request)
        except FormError as exc:
            raise Refused(exc.status, str(exc)) from None

    async def retry(self, request: Request) -> Response:
        """Retry a failed, cancelled or retrying job now, with its full retry budget."""
        try:
            job_id = _text((await self._action_form(request)).get("id", ""))
            if await run_in_threadpool(self.admin.retry, job_id) is None:
                raise await run_in_threadpool(
                    self._not_done, job_id, "only failed, cancelled or retrying jobs can be retried"
                )
        except Refused as refused:
            return await self.refused(request, refused)
        return self.redirect(request, "/jobs/" + quote(job_id), done="retried")

    async def retry_failed(self, request: Request) -> Response:
        """Retry every failed job of a type and queue (either may be empty: any)."""
        try:
            form = await self._action_form(request)
            wanted = {name: _text(form.get(name, "")) for name in ("type", "queue")}
        except Refused as refused:
            return await self.refused(request, refused)
        await run_in_threadpool(
            lambda: self.admin.retry_failed(
                job_type=wanted["type"] or None, queue=wanted["queue"] or None
            )
        )
        given = {name: value for name, value in wanted.items() if value}
        return self.redirect(request, "/jobs", status="failed", **given, done="retried-failed")

    async def delete(self, request: Request) -> Response:
        """Delete a job that is not running, with its checkpoints."""
        try:
            job_id = _text((await self._action_form(request)).get("id", ""))
            if await run_in_threadpool(self.admin.delete, job_id) is None:
                raise await run_in_threadpool(
                    self._not_done, job_id, "a running job cannot be deleted"
                )
        except Refused as refused:
            return await self.refused(request, refused)
        return self.redirect(request, "/jobs", done="deleted")

    async def cancel(self, request: Request) -> Response:
        """Cancel an unfinished job with its unfinished descendants."""
        try:
            job_id = _text((await self._action_form(request)).get("id", ""))
            cancelled = await run_in_threadpool(self.storage.cancel, job_id)
            if cancelled is None or job_id not in {job.id for job in cancelled}:
                raise await run_in_threadpool(
                    self._not_done, job_id, "only unfinished jobs can be cancelled"
                )
        except Refused as refused:
            return await self.refused(request, refused)
        return self.redirect(request, "/jobs/" + quote(job_id), done="cancelled")

    async def pause(self, request: Request) -> Response:
        """Pause a job (held from its next run on)."""
        return await self._job_switch(request, self.storage.pause, "paused", "not pausable")

    async def resume(self, request: Request) -> Response:
        """Resume a paused job."""
        return await self._job_switch(request, self.storage.resume, "resumed", "not paused")

    async def _job_switch(
        self, request: Request, switch: Callable[[str], bool], done: str, rule: str
    ) -> Response:
        try:
            job_id = _text((await self._action_form(request)).get("id", ""))
            if not await run_in_threadpool(switch, job_id):
                raise await run_in_threadpool(self._not_done, job_id, rule)
        except Refused as refused:
            return await self.refused(request, refused)
        return self.redirect(request, "/jobs/" + quote(job_id), done=done)

    async def pause_queue(self, request: Request) -> Response:
        """Stop every worker from claiming jobs of a queue."""
        return await self._queue_switch(request, self.storage.pause_queue, "queue-paused")

    async def resume_queue(self, request: Request) -> Response:
        """Let workers claim from a paused queue again."""
        return await self._queue_switch(request, self.storage.resume_queue, "queue-resumed")

    async def _queue_switch(
        self, request: Request, switch: Callable[[str], None], done: str
    ) -> Response:
        try:
            name = _text((await self._action_form(request)).get("queue", ""))
            try:
                name = check_queue_name(name)
            except ValueError as exc:
                raise Refused(400, str(exc)) from None
            await run_in_threadpool(switch, name)
        except Refused as refused:
            return await self.refused(request, refused)
        with self._overview_lock:
            self._overview_cache = None  # the overview shows the change at once
        return self.redirect(request, "/", done=done)

    def _not_done(self, job_id: str, rule: str) -> Refused:
        # Why an action changed nothing: the job is gone, or its status forbids it.
        job = self.storage.get_job(job_id)
        if job is None:
            return Refused(404, f"no job with id {job_id!r}")
        return Refused(409, f"job {job_id} is {job.status.value}: {rule}")

    async def enqueue(self, request: Request) -> Response:
        """Enqueue a job of a type with JSON arguments and optional queue, priority, delay."""
        try:
            form = await self._action_form(request)
        except Refused as refused:
            return await self.refused(request, refused)
        try:
            name, args, options = _enqueue_request(form)
            job_id = await run_in_threadpool(lambda: self.producer.enqueue(name, args, **options))
        except (ValueError, TypeError) as exc:
            return await self.render(
                request, "enqueue.html", self._enqueue_data(form, str(exc)), status=400
            )
        return self.redirect(request, "/jobs/" + quote(job_id), done="enqueued")


def base_path(request: Request) -> str:
    """The path the dashboard is mounted at ("" at the root), for building links."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def job_url(request: Request, job_id: str) -> str:
    """The path of a job's page."""
    return f"{base_path(request)}/jobs/{quote(job_id)}"


def _text(value: str) -> str:
    # No database text column stores NUL; refused here rather than failing in the driver.
    if "\x00" in value:
        raise Refused(400, "text with a NUL character")
    return value.strip()


def _meta_filter(text: str) -> dict[str, str] | None:
    """The job list's meta filter, ``key=value``; raises ``ValueError`` for another form."""
    if not text:
        return None
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"meta filter {text!r} is not of the form key=value")
    return {key.strip(): value.strip()}


def _enqueue_request(form: dict[str, str]) -> tuple[str, Any, dict[str, Any]]:
    name = form.get("type", "").strip()
    if not name:
        raise ValueError("give the job type")
    try:
        args = json.loads(form.get("args", "").strip() or "null")
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments are not valid JSON: {exc}") from None
    options: dict[str, Any] = {}
    if form.get("queue", "").strip():
        options["queue"] = form["queue"].strip()
    for field, kind in (("priority", int), ("delay", float)):
        text = form.get(field, "").strip()
        if text:
            try:
                options[field] = kind(text)
            except ValueError:
                raise ValueError(f"{field} must be a number, got {text!r}") from None
    return name, args, options


def _steps(job: Job, checkpoints: list[Checkpoint]) -> list[Step]:
    steps = []
    previous: datetime | None = None
    for cp in sorted(checkpoints, key=lambda c: c.created_at):
        # A step's time runs from the previous step or, for the first step of the
        # latest run, from that run's start; steps of earlier runs before it have no
        # known start.
        start = previous
        if job.started_at is not None and job.started_at <= cp.created_at:
            start = max(start, job.started_at) if start else job.started_at
        path = f"{cp.scope}.{cp.call_index}" if cp.scope else str(cp.call_index)
        steps.append(Step(path, cp, cp.created_at - start if start else None))
        previous = cp.created_at
    return steps


def _timeline(job: Job, steps: list[Step]) -> list[Event]:
    events = [Event(job.created_at, f"Enqueued on queue {job.queue}", "neutral")]
    waiting = job.status in (JobStatus.PENDING, JobStatus.RETRYING)
    if waiting and job.run_at is not None and job.run_at > job.created_at:
        what = "Next attempt due" if job.status == JobStatus.RETRYING else "Due to run"
        events.append(Event(job.run_at, what, "neutral"))
    if job.started_at is not None:
        worker = job.locked_by or job.finished_by
        on = f" on worker {worker}" if worker else ""
        events.append(Event(job.started_at, f"Run {job.attempt} started{on}", "neutral"))
    for step in steps:
        cp = step.checkpoint
        outcome = "failed" if cp.error is not None else "saved"
        events.append(Event(cp.created_at, f"Step {step.path} ({cp.call_type}) {outcome}", "step"))
    if job.status == JobStatus.WAITING and job.wait_until is not None:
        events.append(Event(job.wait_until, f"Wait ({job.waiting_for}) ends", "neutral"))
    if job.status == JobStatus.RUNNING and job.heartbeat_at is not None:
        events.append(Event(job.heartbeat_at, "Last heartbeat", "neutral"))
    if job.finished_at is not None:
        if job.status == JobStatus.COMPLETED:
            events.append(Event(job.finished_at, "Completed", "ok"))
        elif job.status == JobStatus.FAILED:
            events.append(Event(job.finished_at, "Failed permanently", "bad"))
    return sorted(events, key=lambda e: e.at)
