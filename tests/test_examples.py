"""The README's quick start and the examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, cwd: Path) -> str:
    """Run ``examples/<name>`` in ``cwd`` (where it keeps its database); its stdout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_quickstart_runs(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "sending 'Hello' to u@example.com" in out
    assert out.strip().endswith("""b'"sent"'""")


def test_order_workflow_example_resumes_without_charging_twice(tmp_path: Path) -> None:
    out = run_example("order_workflow.py", tmp_path)
    assert out.count("charging 4999 cents") == 1
    assert out.count("shipping o-1001") == 1
    assert "completed after 2 runs" in out


def test_readme_quick_start_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    body = example.split('"""', 2)[2].strip()
    assert body in readme
