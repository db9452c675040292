"""The job page's explain panel: ``queue.explain``'s answer, ready for the template."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..explain import Explanation

__all__ = ["ExplainPanel", "explain_panel"]


@dataclass(frozen=True, slots=True)
class ExplainPanel:
    """The reason code, the sentence and the facts as (name, text) rows."""

    reason: str
    message: str
    facts: list[tuple[str, str]]


def explain_panel(found: Explanation) -> ExplainPanel:
    """``found`` as the panel shows it: facts without a value left out, times in UTC."""
    rows = []
    for name, value in found.facts.items():
        if value is None:
            continue
        rows.append((name.replace("_", " "), _text(value)))
    return ExplainPanel(found.reason.value, found.message, rows)


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # UTC, as the page's times
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)
