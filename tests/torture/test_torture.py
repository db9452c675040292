"""The short torture run as part of the normal suite (CI), on each backend under test
that the driver knows (SQLite, PostgreSQL and MySQL/MariaDB).

The long run is a separate command: ``python -m tests.torture --long`` (README.md here).
"""

from __future__ import annotations

import pytest

from tests.conftest import BACKENDS
from tests.torture import driver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in driver.WORKERS])
def test_short_torture_run_keeps_every_guarantee(backend: str) -> None:
    report = driver.run(backend, driver.SHORT)
    print(report.line())  # shown with -rP or -s
