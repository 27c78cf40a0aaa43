"""SQLAlchemy without greenlet (SQLAlchemy 2.1 no longer installs it): the library works
through psycopg and sync SQLAlchemy connections from the first call in a process, because
telling connections apart imports nothing the caller did not use (`sqlalchemy.ext.asyncio`
raises ImportError without greenlet).

The first record_usage runs in a fresh venv holding only psycopg and SQLAlchemy (the versions
of this environment, so pip's cache usually serves them); `-m "not registry"` skips it where
no package registry is reachable, and it skips itself when pip cannot install.
"""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import psycopg
import pytest

import outbox

PACKAGES = ("sqlalchemy", "psycopg", "psycopg-binary", "typing_extensions")
ROOT = Path(outbox.__file__).resolve().parent.parent  # the library from this checkout

RECORD = """
import importlib.util, sys
assert importlib.util.find_spec("greenlet") is None, "greenlet is installed"
import psycopg, sqlalchemy, sqlalchemy.orm, outbox
url, how = sys.argv[1], sys.argv[2]
fact = dict(event_name="api_calls", customer="cus_1", value=1, identifier=how)
if how == "psycopg":
    with psycopg.connect(url) as conn:
        outbox.record_usage(conn, **fact)
else:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    if how == "sqlalchemy_connection":
        with engine.begin() as conn:
            outbox.record_usage(conn, **fact)
    else:
        with sqlalchemy.orm.Session(engine) as session, session.begin():
            outbox.record_usage(session, **fact)
print("asyncio imported" if "sqlalchemy.ext.asyncio" in sys.modules else "asyncio not imported")
"""


@pytest.fixture(scope="module")
def python_without_greenlet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("no-greenlet") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    out = subprocess.run([*install, "--quiet", *pins], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(pins)}: {out.stderr.strip()[-300:]}")
    return python


def test_telling_connections_apart_imports_nothing() -> None:
    """Here greenlet is installed, so the import would succeed: it must not happen at all."""
    code = (
        "import sys, psycopg, sqlalchemy, sqlalchemy.orm\n"
        "from outbox.connections import _kind\n"
        "kinds = [_kind(object()), _kind(psycopg.Connection.__new__(psycopg.Connection))]\n"
        "print(kinds, sorted(m for m in sys.modules if m.startswith('sqlalchemy.ext')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['unsupported', 'psycopg'] []"


@pytest.mark.registry
@pytest.mark.parametrize("how", ["psycopg", "sqlalchemy_connection", "sqlalchemy_session"])
def test_the_first_record_usage_works_without_greenlet(
    python_without_greenlet: Path, database_url: str, how: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [str(python_without_greenlet), "-c", RECORD, database_url, how],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "asyncio not imported"
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT state FROM meter_event_outbox WHERE identifier = %s", (how,)
        ).fetchall()
    assert found == [("pending",)]
