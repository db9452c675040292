"""Database URLs as they may be shown: in logs, errors and listings, never a password."""

from __future__ import annotations

import re

import sqlalchemy as sa

__all__ = ["masked"]

# user:password@ after a scheme; the password runs to the last "@" before whitespace or a
# quote, since an unescaped "@" in it is what a person mistypes most.
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):[^\s'\"]*@")


def masked(url: str | sa.URL) -> str:
    """``url`` with its password replaced by ``***``; works on URLs that do not parse."""
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=True)
    return _CREDENTIALS.sub(r"\g<head>:***@", url)
