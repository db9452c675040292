"""psycopg is an optional extra: SQLite needs no driver, and a PostgreSQL URL without one
says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _run(*parts: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = "".join(textwrap.dedent(part) for part in parts)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


# Runs first in the child: psycopg behaves as if it were not installed.
_WITHOUT_PSYCOPG = """
    import sys
    sys.modules["psycopg"] = None  # "import psycopg" now raises ImportError
"""


def test_sqlite_works_without_psycopg_installed(tmp_path: Path) -> None:
    done = _run(
        _WITHOUT_PSYCOPG,
        """
        import durable_jobs as jobs
        import durable_jobs.cli
        from durable_jobs.job import Job

        storage = jobs.SQLStorage("sqlite:///jobs.db")
        storage.migrate()
        storage.enqueue(Job(type="t", args=b"[]"))
        [job] = storage.claim("default", "w1", 10)
        assert storage.complete(job.id, worker_id="w1", fence=job.fence)
        assert storage.listener() is not None
        storage.close()
        print("ok")
        """,
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_importing_the_library_for_sqlite_never_imports_psycopg(tmp_path: Path) -> None:
    done = _run(
        """
        import sys
        import durable_jobs as jobs
        import durable_jobs.cli

        storage = jobs.SQLStorage("sqlite://")
        storage.migrate()
        storage.close()
        print("psycopg" in sys.modules)
        """,
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_postgresql_url_without_psycopg_names_the_extra_to_install(tmp_path: Path) -> None:
    done = _run(
        _WITHOUT_PSYCOPG,
        """
        import durable_jobs as jobs
        from durable_jobs.storage.dialects import MissingDriver

        for url in ("postgresql://u:secret@localhost/db", "postgres://localhost/db"):
            try:
                jobs.SQLStorage(url)
            except MissingDriver as exc:
                assert isinstance(exc, ImportError)
                print(exc)
            else:
                raise AssertionError("no error")
        """,
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    expected = "PostgreSQL support needs psycopg: pip install 'simple-durable-jobs[postgres]'"
    assert done.stdout.splitlines() == [expected, expected]


def test_sdj_worker_on_a_postgresql_app_without_psycopg_says_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "pg_app.py").write_text(
        "import durable_jobs as jobs\nqueue = jobs.Queue('postgresql://localhost/db')\n"
    )
    done = _run(
        _WITHOUT_PSYCOPG,
        """
        from durable_jobs.cli import app
        app(["worker", "pg_app:queue"])
        """,
        tmp_path=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    expected = "PostgreSQL support needs psycopg: pip install 'simple-durable-jobs[postgres]'"
    assert done.stderr.strip().splitlines() == [f"Error: {expected}"]
