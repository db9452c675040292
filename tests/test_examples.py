"""The README's quick start and the examples run as written, each in a temporary
directory that holds its database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# fastapi_app.py is served by uvicorn in tests/contrib/test_fastapi.py.
TESTED = {
    "quickstart.py",
    "order_workflow.py",
    "waiting_order.py",
    "job_control.py",
    "fastapi_app.py",
}
#: Every example finishes in a few seconds; this only bounds a hang.
TIMEOUT = 60
FAILURE = "SMTP server refused the connection"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without ``$SDJ_DATABASE_URL`` (examples use their default)."""
    env = {k: v for k, v in os.environ.items() if k != "SDJ_DATABASE_URL"}
    return {**env, **extra}


def run_script(
    script: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def run_example(name: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``examples/<name>`` in ``cwd`` (where it keeps its database); its stdout."""
    done = run_script(EXAMPLES / name, cwd, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def database_files(directory: Path) -> set[str]:
    """The files in ``directory``, SQLite's -wal and -shm companions left out."""
    return {p.name for p in directory.iterdir() if not p.name.endswith(("-wal", "-shm"))}


def failing_quickstart(tmp_path: Path) -> Path:
    """A copy of the quick start whose handler raises."""
    source = (EXAMPLES / "quickstart.py").read_text()
    assert 'return "sent"' in source
    script = tmp_path / "failing_quickstart.py"
    script.write_text(source.replace('return "sent"', f"raise ConnectionError({FAILURE!r})"))
    return script


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


def test_quickstart_prints_the_result(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert out.splitlines() == ["sending 'Hello' to u@example.com", "sent"]


def test_quickstart_uses_the_database_sdj_defaults_to(tmp_path: Path) -> None:
    run_example("quickstart.py", tmp_path)
    assert database_files(tmp_path) == {"jobs.db"}
    listed = subprocess.run(
        [sys.executable, "-m", "durable_jobs.cli", "jobs", "list"],
        cwd=tmp_path,
        env=clean_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "send_email" in listed.stdout and "completed" in listed.stdout


def test_quickstart_follows_sdj_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run_example("quickstart.py", tmp_path, clean_env(SDJ_DATABASE_URL=url))
    assert database_files(tmp_path) == {"elsewhere.db"}


def test_quickstart_with_a_failing_handler_raises(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run_script(failing_quickstart(tmp_path), tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    # Three runs (retries=2) with the default backoff: a few seconds, not the timeout.
    assert elapsed < 25, elapsed
    assert done.stdout.count("sending 'Hello'") == 3
    last = done.stderr.strip().splitlines()[-1]
    assert "JobFailed" in last and f"ConnectionError: {FAILURE}" in last, done.stderr


def test_order_workflow_replays_in_one_run(tmp_path: Path) -> None:
    out = run_example("order_workflow.py", tmp_path)
    lines = out.splitlines()
    # The first run charges, reserves and fails to ship; the second replays the charge
    # and the reservation from their checkpoints and goes on from the failed step.
    assert lines == [
        "place_order(o-1001) run 1",
        "  charging 4999 cents for o-1001",
        "  reserving ['book', 'lamp']",
        "  shipping o-1001: the shipping service is down",
        "place_order(o-1001) run 2",
        "  shipping o-1001",
        "  notifying: order o-1001 shipped (track_o-1001), paid by ch_o-1001",
        "completed after 2 runs, tracking number track_o-1001",
        "executions: place_order x2, charge-payment x1, ship-order x2",
    ]
    assert database_files(tmp_path) == {"orders.db"}  # and the outage marker is gone


def test_order_workflow_does_not_branch_on_attempt() -> None:
    source = (EXAMPLES / "order_workflow.py").read_text()
    code = source.split('"""', 2)[2].split("__main__")[0]  # past the docstring, before main
    assert ".attempt" not in code


def test_order_workflow_runs_again_the_same_way(tmp_path: Path) -> None:
    # A second run is a new job on the same database: it shows replay again and
    # charges once again (it is another order), not twice.
    first = run_example("order_workflow.py", tmp_path)
    assert run_example("order_workflow.py", tmp_path) == first


def test_readme_quick_start_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (EXAMPLES / "quickstart.py").read_text()
    body = example.split('"""', 2)[2].strip()
    assert body in readme
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "queue.result(job_id, timeout=" in quick_start
    assert "jobs.db" in quick_start and "sdj jobs list" in quick_start
    assert "quickstart.db" not in readme


def test_waiting_order_waits_for_payment_fans_out_and_sleeps(tmp_path: Path) -> None:
    started = time.monotonic()
    output = run_example("waiting_order.py", tmp_path)
    assert "order is waiting: {'stage': 'awaiting payment'}" in output
    assert "'paid': {'amount': 42, 'by': 'card'}" in output
    assert "'book packed for order-7', 'lamp packed for order-7', 'mug packed for order-7'" in (
        output
    )
    assert time.monotonic() - started < TIMEOUT


def test_job_control_dedupes_pauses_cancels_and_times_out(tmp_path: Path) -> None:
    lines = run_example("job_control.py", tmp_path).splitlines()
    assert "one job for sync:7: True -> user 7 synced" in lines
    assert "newsletter while its queue is paused: pending" in lines
    assert "after resume_queue: issue 12 sent" in lines
    assert any(line.endswith("(export) was cancelled") for line in lines)
    assert (
        "slow report: JobTimeout: the run of 'slow_report' exceeded its timeout of 0.5 s" in lines
    )
