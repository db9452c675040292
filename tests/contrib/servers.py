"""Real server processes for the framework tests: uvicorn on a socket the test binds."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx


@contextlib.contextmanager
def uvicorn(app: str, cwd: Path, env: dict[str, str], log: Path) -> Iterator[httpx.Client]:
    """Serve ``app`` ("module:attr", importable from ``cwd``) with uvicorn in a child
    process; a client for it. The listening socket is bound here (on a free port) and
    handed over, so requests made before the app has started wait for it rather than
    being refused. The server is stopped with SIGTERM and must shut down cleanly."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--fd", str(sock.fileno()), app],
            cwd=cwd,
            env=env,
            pass_fds=(sock.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sock.close()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{app} did not stop on SIGTERM") from None
    output = log.read_text(errors="replace")
    # uvicorn ends by re-raising the signal it handled, once its shutdown is complete.
    assert code in (0, -signal.SIGTERM), f"{app} exited with {code}:\n{output}"
    assert "Application shutdown complete" in output, output
