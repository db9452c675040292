"""Finding the user's ``Queue`` from a ``MODULE:QUEUE`` reference, the way uvicorn finds apps."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from ..errors import StorageError
from ..queue import Queue
from ..storage.dialects import MissingDriver
from .errors import CLIError

__all__ = ["load_queue"]


def load_queue(target: str) -> Queue:
    """Import ``module`` from ``"module:attribute"`` and return its ``Queue``.

    The current directory goes first on ``sys.path`` so a project's own modules import
    as they do in ``python -m``. An error raised inside the module is printed with its
    traceback (it is the module's bug, which its author needs to find), then reported
    as the command's one-line error. A missing driver or an unreachable database met
    while importing is the user's setup, not the module's bug: its sentence is the error.
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
            raise _failed_import(module_name, exc) from exc  # something it imports is missing
        raise CLIError(f"cannot import {module_name!r}: {exc}") from None
    except (MissingDriver, StorageError):
        raise
    except Exception as exc:
        raise _failed_import(module_name, exc) from exc
    queue = getattr(module, attribute, None)
    if not isinstance(queue, Queue):
        found = "nothing" if queue is None else f"a {type(queue).__name__}"
        raise CLIError(
            f"module {module_name!r} does not define a Queue named {attribute!r} (found {found})"
        )
    return queue


def _failed_import(module_name: str, exc: Exception) -> CLIError:
    traceback.print_exception(exc)
    return CLIError(
        f"importing {module_name!r} raised {type(exc).__name__}: {exc} (traceback above)"
    )
