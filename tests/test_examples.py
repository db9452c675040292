"""The README's quick start and the examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "sending 'Hello' to u@example.com" in out.stdout
    assert out.stdout.strip().endswith("""b'"sent"'""")


def test_order_workflow_example_resumes_without_charging_twice(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_workflow.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.count("charging 4999 cents") == 1
    assert out.stdout.count("shipping o-1001") == 1
    assert "completed after 2 runs" in out.stdout


def test_readme_quick_start_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    body = example.split('"""', 2)[2].strip()
    assert body in readme
