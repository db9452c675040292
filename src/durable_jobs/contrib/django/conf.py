"""Settings: where the jobs live.

``SDJ_DATABASE_URL`` in Django's settings names the jobs' database. Without it the jobs
live in Django's ``default`` database, reached by the library through its own SQLAlchemy
engine at the URL built here from ``settings.DATABASES``; only then can an enqueue join
Django's transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["ALIAS", "database_url", "django_database_url", "shares_django_database", "url_of"]

#: The Django database the jobs share when ``SDJ_DATABASE_URL`` is not set.
ALIAS = "default"

# Django's database engines and the SQLAlchemy dialects (with the drivers the library
# uses) that reach the same databases.
_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.contrib.gis.db.backends.postgis": "postgresql+psycopg",
    "django.db.backends.mysql": "mysql+pymysql",
    "django.contrib.gis.db.backends.mysql": "mysql+pymysql",
    "django.db.backends.sqlite3": "sqlite",
    "django.contrib.gis.db.backends.spatialite": "sqlite",
}
# PostgreSQL OPTIONS that are Django's own rather than libpq's connection parameters.
_DJANGO_OPTIONS = {
    "isolation_level",
    "server_side_binding",
    "pool",
    "assume_role",
    "cursor_factory",
    "context",
}


def database_url() -> str:
    """The jobs' database: ``settings.SDJ_DATABASE_URL``, else Django's ``default``."""
    url = getattr(settings, "SDJ_DATABASE_URL", None)
    if url:
        return str(url)
    return django_database_url(ALIAS).render_as_string(hide_password=False)


def django_database_url(alias: str = ALIAS) -> sa.URL:
    """The SQLAlchemy URL of Django's database ``alias`` (PostgreSQL, MySQL or SQLite)."""
    try:
        db = settings.DATABASES[alias]
    except KeyError:
        raise ImproperlyConfigured(f"no database {alias!r} in settings.DATABASES") from None
    return url_of(db, alias)


def url_of(db: Mapping[str, Any], alias: str = ALIAS) -> sa.URL:
    """The SQLAlchemy URL of the database a ``settings.DATABASES`` entry describes."""
    engine = db.get("ENGINE", "")
    driver = _DRIVERS.get(engine)
    if driver is None:
        raise ImproperlyConfigured(
            f"durable_jobs cannot share Django's database {alias!r}: its ENGINE {engine!r} is "
            "not PostgreSQL, MySQL or SQLite; set SDJ_DATABASE_URL"
        )
    name = str(db.get("NAME") or "")
    if driver == "sqlite":
        if not name or name == ":memory:" or "mode=memory" in name:
            raise ImproperlyConfigured(
                f"Django's database {alias!r} is an in-memory SQLite database, which no "
                "other connection can see; give it a file or set SDJ_DATABASE_URL"
            )
        return sa.URL.create("sqlite", database=str(Path(name).resolve()))
    options = db.get("OPTIONS") or {}
    query = {}
    if driver.startswith("postgresql"):
        query = {
            key: str(value)
            for key, value in options.items()
            if key not in _DJANGO_OPTIONS and isinstance(value, str | int)
        }
    elif "charset" in options:
        query = {"charset": str(options["charset"])}
    return sa.URL.create(
        driver,
        username=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=int(db["PORT"]) if db.get("PORT") else None,
        database=name or None,
        query=query,
    )


def shares_django_database() -> bool:
    """Whether the jobs live in Django's ``default`` database, so that an enqueue can run
    on Django's connection (an ``SDJ_DATABASE_URL`` naming that same database counts)."""
    url = getattr(settings, "SDJ_DATABASE_URL", None)
    return not url or _where(sa.make_url(str(url))) == _where(django_database_url(ALIAS))


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def _where(url: sa.URL) -> tuple[str, str | None, int | None, str | None]:
    backend, database = url.get_backend_name(), url.database
    if backend == "sqlite" and database:
        database = str(Path(database).resolve())
    return backend, url.host or None, url.port or _DEFAULT_PORTS.get(backend), database
