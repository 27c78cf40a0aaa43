"""Minimal settings: one app (shop), PostgreSQL through Django's psycopg 3 backend."""

import os
from urllib.parse import parse_qsl, unquote, urlsplit

_url = urlsplit(os.environ["DJANGO_DATABASE_URL"])
# libpq parameters in the query string (e.g. ?host=/socket/dir of an embedded server).
_params = dict(parse_qsl(_url.query))

SECRET_KEY = "test-only-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["shop"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _params.pop("host", _url.hostname or ""),
        "PORT": _params.pop("port", str(_url.port or "")),
        "OPTIONS": _params,
    }
}
