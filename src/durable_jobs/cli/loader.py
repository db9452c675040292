"""Finding the user's ``Queue`` from a ``MODULE:QUEUE`` reference, the way uvicorn finds apps."""

from __future__ import annotations

import importlib
import os
import sys

from ..queue import Queue
from .errors import CLIError

__all__ = ["load_queue"]


def load_queue(target: str) -> Queue:
    """Import ``module`` from ``"module:attribute"`` and return its ``Queue``.

    The current directory goes first on ``sys.path`` so a project's own modules import
    as they do in ``python -m``. Errors raised inside the module keep their traceback:
    they are the module's bugs, not a mistake in the reference.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"expected MODULE:QUEUE, such as myapp.tasks:queue; got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but something it imports does not
        raise CLIError(f"cannot import {module_name!r}: {exc}") from None
    queue = getattr(module, attribute, None)
    if not isinstance(queue, Queue):
        found = "nothing" if queue is None else f"a {type(queue).__name__}"
        raise CLIError(
            f"module {module_name!r} does not define a Queue named {attribute!r} (found {found})"
        )
    return queue
