"""The SQLAlchemy URL of a Django database, as the jobs' storage reaches it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from durable_jobs.contrib.django.conf import url_of


def test_postgresql_with_libpq_options() -> None:
    url = url_of(
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "p@ss word",
            "HOST": "db.internal",
            "PORT": "6432",
            "OPTIONS": {"sslmode": "require", "isolation_level": 3, "pool": True},
        }
    )
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port) == (
        "app",
        "p@ss word",
        "db.internal",
        6432,
    )
    assert url.database == "shop" and dict(url.query) == {"sslmode": "require"}


def test_postgresql_on_the_local_socket() -> None:
    url = url_of({"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": ""})
    assert url.render_as_string() == "postgresql+psycopg:///shop"


def test_mysql_uses_the_librarys_driver() -> None:
    url = url_of(
        {
            "ENGINE": "django.db.backends.mysql",
            "NAME": "shop",
            "USER": "root",
            "HOST": "127.0.0.1",
            "PORT": 3306,
            "OPTIONS": {"charset": "utf8mb4", "init_command": "SET sql_mode='STRICT_TRANS_TABLES'"},
        }
    )
    assert url.render_as_string() == "mysql+pymysql://root@127.0.0.1:3306/shop?charset=utf8mb4"


def test_sqlite_names_the_file_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = url_of({"ENGINE": "django.db.backends.sqlite3", "NAME": Path("db.sqlite3")})
    assert url.render_as_string() == f"sqlite:///{tmp_path / 'db.sqlite3'}"


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, "in-memory"),
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "file:memorydb?mode=memory"},
            "in-memory",
        ),
        ({"ENGINE": "django.db.backends.oracle", "NAME": "shop"}, "not PostgreSQL, MySQL"),
    ],
)
def test_databases_the_jobs_cannot_share(db: dict[str, str], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        url_of(db)
