"""docs/testing.md: its code blocks form a test module, run by pytest in a session of
its own, as a user's suite would run with the package installed (the plugin comes from
its entry point)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_the_examples_of_docs_testing_pass_in_a_users_session(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    (tmp_path / "test_doc_examples.py").write_text("\n\n".join(blocks))
    # Without a configured server, the PostgreSQL fixture skips.
    (tmp_path / "test_server.py").write_text("def test_it(sdj_postgres_queue):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "SDJ_TEST_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "5 passed, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert "no database server configured" in done.stdout
