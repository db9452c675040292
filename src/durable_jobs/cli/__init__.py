"""The ``sdj`` command line: workers, job administration and the demo."""

from __future__ import annotations

from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``sdj`` console script."""
    app()
