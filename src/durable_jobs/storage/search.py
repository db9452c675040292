"""What a job search matches on besides the job's own columns: its tags and meta values.

Migration 12 keeps each tag and each scalar meta value of a job as a row of
``sdj_job_labels`` (written by a trigger in the enqueue's statement), led by
(kind, label, value, created_at, position): a search by one of them is one range of
that index read newest first, however many jobs the table holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LABEL_CHARS", "Label", "labels", "meta_text"]

#: How much of a label and of its value the index keeps (and a search compares).
LABEL_CHARS = 200

#: (kind, label, value): a tag is ("t", tag, ""), a meta entry ("m", key, value as text).
Label = tuple[str, str, str]


def meta_text(key: str, value: Any) -> str:
    """A meta value as the labels store it: strings as they are, integers in decimal,
    booleans as ``true``/``false``. Other values are not labelled, so cannot be searched."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)[:LABEL_CHARS]
    raise ValueError(
        f"meta {key!r}: a search matches strings, integers and booleans, got {value!r}"
    )


def labels(tag: str | None, meta: Mapping[str, Any] | None) -> list[Label]:
    """The labels a job must all have to match ``tag`` and every entry of ``meta``."""
    found: list[Label] = []
    if tag is not None:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"tag must be a non-empty string, got {tag!r}")
        found.append(("t", tag[:LABEL_CHARS], ""))
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"meta keys must be non-empty strings, got {key!r}")
        found.append(("m", key[:LABEL_CHARS], meta_text(key, value)))
    return found
