"""Private database servers left behind by a torture run that was killed.

A run that is SIGKILLed (a CI timeout, an impatient Ctrl-C) never reaches the code that
stops its private server, and the server, in a session of its own, outlives it. Each run
writes its own pid in its server's directory; the next run stops the servers of runs
that are gone and deletes their directories, so orphans never pile up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["orphaned", "own"]

_OWNER = "owner.pid"


def own(root: Path) -> None:
    """Mark ``root`` as this process's."""
    (root / _OWNER).write_text(str(os.getpid()))


def orphaned(prefix: str) -> Iterator[Path]:
    """The directories named ``prefix*`` in the temporary directory whose run is gone."""
    for root in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((root / _OWNER).read_text())
        except (OSError, ValueError):
            continue  # a run that has not marked it yet, or not ours to judge
        if not _alive(owner):
            yield root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
