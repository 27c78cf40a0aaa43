"""Recipe (c): a real Django project whose own migration creates the outbox schema, records
usage in `transaction.atomic()` through a Django cursor, and the relay drains it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.db import migrate
from relay.emulator import Emulator, EmulatorConfig
from tests.support.adoption import HEAD, versions
from tests.support.relay import make_settings, running_relay, states

pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parents[2] / "django_app"


def manage(url: str, *args: str) -> str:
    env = {**os.environ, "DJANGO_DATABASE_URL": url}
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_recipe_c_django_migrate_creates_the_outbox_and_the_relay_drains_atomic_usage(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    manage(url, "migrate", "--no-input")
    assert versions(url, "outbox_alembic_version") == [HEAD]
    assert migrate.current(url) == HEAD

    assert "created=True" in manage(url, "bill_request", "r1", "cus_django")
    assert "created=False" in manage(url, "bill_request", "r1", "cus_django")  # replay
    assert "rolled back" in manage(url, "bill_request", "r2", "cus_django", "--fail")
    assert states(url) == {"pending": 1}

    with Emulator(EmulatorConfig(rate_limit_test=None, rate_limit_live=None)) as emulator:
        async with running_relay(make_settings(url, emulator)) as relay:

            async def drained() -> bool:
                return states(url) == {"accepted": 1}

            await relay.until(drained)
        assert emulator.counted("api-req-r1") == 1
        assert emulator.counted("api-req-r2") == 0
