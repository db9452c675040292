"""The first hour of a new user, in a fresh virtual environment.

The library is installed the way a user installs it: ``pip install <project>`` into a
new venv without the system's site-packages, so a dependency missing from
``pyproject.toml`` or a file missing from the wheel fails here. (A full install from the
package index took about 16 s when measured, well under the 60 s budget, so the test
does not borrow the development venv's packages through ``--system-site-packages``.)
The project is copied first so that building it never writes into the source tree.

Then, in an empty directory with ``$SDJ_DATABASE_URL`` unset, as a newcomer would:

a. the README's quick start runs, prints its result, and ``sdj jobs list`` (same
   default database) shows the job;
b. the quick start with a handler that raises exits non-zero within seconds, naming
   the error;
c. a handler registered on a named queue runs on ``queue.worker()``'s default queues.

Each step has a hard timeout: a hang is a failure, not a stuck test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 120
#: What "promptly" means for a quick start: one job, a few retries at most.
PROMPT = 30
FAILURE = "SMTP server refused the connection"


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"
        self.sdj = path / "bin" / "sdj"

    def run(self, argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run ``argv`` in ``cwd`` as a new user would; the outcome and its duration."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"SDJ_DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        }
        env["COLUMNS"] = "200"
        started = time.monotonic()
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=PROMPT + 10
        )
        return done, time.monotonic() - started

    def script(self, source: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        path = cwd / "app.py"
        path.write_text(source)
        return self.run([str(self.python), str(path)], cwd)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("new-user")
    project = base / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "src",
        project / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    env = Venv(base / "venv")
    subprocess.run(
        [sys.executable, "-m", "venv", str(env.path)], check=True, timeout=INSTALL_TIMEOUT
    )
    installed = subprocess.run(
        [str(env.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", project],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The new user's empty working directory."""
    return tmp_path


def quickstart() -> str:
    return (ROOT / "examples" / "quickstart.py").read_text()


def test_the_installed_package_is_the_one_used(venv: Venv, home: Path) -> None:
    done, _ = venv.script("import durable_jobs\nprint(durable_jobs.__file__)\n", home)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(venv.path)


def test_a_quick_start_then_sdj_jobs_list(venv: Venv, home: Path) -> None:
    done, took = venv.script(quickstart(), home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "sent"
    assert took < PROMPT, took
    assert (home / "jobs.db").exists()

    listed, _ = venv.run([str(venv.sdj), "jobs", "list"], home)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "send_email" in listed.stdout and "completed" in listed.stdout


def test_b_failing_quick_start_exits_promptly_with_the_error(venv: Venv, home: Path) -> None:
    source = quickstart()
    assert 'return "sent"' in source
    failing = source.replace('return "sent"', f"raise ConnectionError({FAILURE!r})")
    done, took = venv.script(failing, home)
    assert done.returncode != 0, done.stdout + done.stderr
    assert took < PROMPT, took
    last_line = done.stderr.strip().splitlines()[-1]
    assert "JobFailed" in last_line and FAILURE in last_line, done.stderr


def test_c_named_queue_runs_on_the_default_worker(venv: Venv, home: Path) -> None:
    source = """
import durable_jobs as jobs

queue = jobs.Queue()


@queue.job(queue="emails")
def send(to: str) -> str:
    return f"sent to {to}"


job_id = queue.enqueue(send, "u@example.com")
with queue.worker():
    print(queue.result(job_id, timeout=15))
"""
    done, took = venv.script(source, home)
    assert done.returncode == 0, (
        "queue.worker() without queues= should serve 'default' and every queue its "
        f"handlers name (API.md, Workers), but the job on 'emails' never ran:\n{done.stderr}"
    )
    assert done.stdout.strip() == "sent to u@example.com"
    assert took < PROMPT, took
