"""The release of the library that is running, as installed."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("simple-durable-jobs")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
