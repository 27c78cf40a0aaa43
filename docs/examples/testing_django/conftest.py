"""An application's conftest.py (Django with pytest-django): the outbox schema comes with the
project's migrations (docs/migrations.md, recipe c), so it is in the test database too."""

from urllib.parse import quote, urlencode

import pytest


@pytest.fixture
def outbox_database_url(django_db_setup: None) -> str:
    """Django's test database (created by pytest-django) as a PostgreSQL URL."""
    from django.db import connection

    s = connection.settings_dict
    params = {"host": s["HOST"], "port": s["PORT"], "user": s["USER"], "password": s["PASSWORD"]}
    query = urlencode({key: value for key, value in params.items() if value})
    return f"postgresql:///{quote(s['NAME'])}?{query}"
