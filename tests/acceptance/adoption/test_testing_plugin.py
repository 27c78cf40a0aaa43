"""outbox.testing, the pytest plugin for applications' tests, run as an application runs it:
the documented examples (docs/examples/testing_*) in a pytest of their own (pytester), against
a real database, the real emulator and the real relay."""

import shutil
import sys
from pathlib import Path

import pytest

from outbox.dburl import with_database
from relay.db import migrate
from tests.pg import admin_execute, unique_name

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "docs" / "examples"
DJANGO_PROJECT = ROOT / "tests" / "django_app"


def quiet_ini(pytester: pytest.Pytester) -> None:
    """pytest-asyncio (installed here) warns in a session that leaves its loop scope unset."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def copy_example(pytester: pytest.Pytester, name: str) -> None:
    for path in (EXAMPLES / name).glob("*.py"):
        shutil.copy(path, pytester.path / path.name)


def test_sqlalchemy_example(
    pytester: pytest.Pytester, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_example(pytester, "testing_sqlalchemy")
    quiet_ini(pytester)
    monkeypatch.setenv("APP_TEST_DATABASE_URL", database_url)
    result = pytester.runpytest_inprocess("-p", "outbox.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_assert_exactly_names_the_missing_and_the_unexpected_facts(
    pytester: pytest.Pytester, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", database_url)
    quiet_ini(pytester)
    pytester.makepyfile(
        """
        import psycopg, outbox, os

        def test_wrong_expectation(outbox_facts):
            with psycopg.connect(os.environ["OUTBOX_DATABASE_URL"]) as conn:
                outbox.record_usage(conn, event_name="api_calls", customer="cus_1", value=3,
                                    identifier="a")
                outbox.record_usage(conn, event_name="api_calls", customer="cus_1", value=1,
                                    identifier="b", dimensions={"region": "eu"})
                outbox_facts.assert_exactly([{"value": 3}, {"value": 7}], conn)

        def test_committed_facts_are_read_without_a_connection(outbox_facts):
            with psycopg.connect(os.environ["OUTBOX_DATABASE_URL"]) as conn:
                outbox.record_usage(conn, event_name="api_calls", customer="cus_2", value=2,
                                    identifier="c")
            outbox_facts.assert_exactly([{"identifier": "c", "state": "pending"}])
            assert outbox_facts(customer="cus_1") == []
        """
    )
    result = pytester.runpytest_inprocess("-p", "outbox.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*recorded facts differ from the 2 expected:",
            "*  missing:    {'value': 7}",
            "*  unexpected: b: api_calls cus_1 value=1 dimensions={'region': 'eu'}",
        ]
    )


def test_without_a_database_the_fixture_says_what_to_set(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTBOX_DATABASE_URL", raising=False)
    quiet_ini(pytester)
    pytester.makepyfile("def test_facts(outbox_facts):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "outbox.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*set OUTBOX_DATABASE_URL or override the outbox_database_url fixture*"]
    )


def test_django_example(
    pytester: pytest.Pytester, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-django creates the test database with the project's migrations (the outbox's
    included) next to the database named here, and drops it afterwards."""
    pytest.importorskip("pytest_django")
    copy_example(pytester, "testing_django")
    name = unique_name("outbox_django")
    monkeypatch.setenv("DJANGO_DATABASE_URL", with_database(pg_admin_url, name))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's outbox, whatever is installed
    pytester.makeini(
        f"""
        [pytest]
        DJANGO_SETTINGS_MODULE = project.settings
        pythonpath = {DJANGO_PROJECT}
        asyncio_default_fixture_loop_scope = function
        """
    )
    try:
        result = pytester.runpytest_subprocess(
            "-p", "outbox.testing", "-p", "django", "-p", "no:cacheprovider", timeout=240
        )
    finally:
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "test_{name}" WITH (FORCE)')
    result.assert_outcomes(passed=2)


def test_the_plugin_is_registered_for_pytest_and_imports_no_relay() -> None:
    """Entry point `pytest11` names the module itself (no double registration with
    pytest_plugins), and loading the plugin does not import the relay."""
    import subprocess
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"outbox.testing": "outbox.testing"}
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, outbox.testing; print(sorted(m for m in sys.modules"
            " if m == 'relay' or m.startswith('relay.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert loaded.stdout.strip() == "[]"
    assert migrate.revisions()  # the schema the examples' databases are migrated to exists
