"""A minimal Django project using ``durable_jobs.contrib.django``, its jobs in Django's
own database: ``$SHOP_DATABASE_URL`` (a SQLAlchemy URL: sqlite:///path or
postgresql://...) becomes ``DATABASES["default"]``."""

import os

import sqlalchemy as sa

url = sa.make_url(os.environ["SHOP_DATABASE_URL"])
if url.get_backend_name() == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url.database,
            # Writers take the lock when their transaction begins: no deadlock between a
            # transaction that read first and a worker's writes.
            "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.database,
            "USER": url.username or "",
            "PASSWORD": url.password or "",
            "HOST": url.host or "",
            "PORT": url.port or "",
        }
    }

# Unset: the jobs live in Django's database. A test sets it to keep them elsewhere.
SDJ_DATABASE_URL = os.environ.get("SHOP_JOBS_DATABASE_URL")

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "durable_jobs.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
