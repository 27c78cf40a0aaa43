"""The library is light and typed: `import outbox` loads no daemon dependency, works with
psycopg alone, the console script names the missing extra, and a sample app passes
`mypy --strict` (sync callers get RecordedUsage, async callers an awaitable)."""

import subprocess
import sys
from pathlib import Path

TYPING_APP = Path(__file__).resolve().parents[2] / "typing_app"
DAEMON = [
    "relay", "sqlalchemy", "alembic", "stripe", "aiohttp", "rich", "uvloop", "structlog",
    "pydantic", "pydantic_settings", "prometheus_client", "click", "orjson", "psycopg_pool",
]  # fmt: skip


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_import_outbox_loads_no_daemon_dependency() -> None:
    out = python(
        "import sys, outbox; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) & set(DAEMON) == set()


def test_record_usage_with_psycopg_alone(database_url: str) -> None:
    """SQLAlchemy absent (as in `pip install outbox-relay`): psycopg connections still work."""
    code = (
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] == 'sqlalchemy':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "import psycopg, outbox\n"
        "with psycopg.connect(sys.argv[1]) as conn:\n"
        "    r = outbox.record_usage(conn, event_name='api_calls', customer='cus_1', value=1,"
        " identifier='lib-1')\n"
        "print(r.created)\n"
    )
    out = python(code, database_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_console_script_without_the_relay_extra_says_what_to_install() -> None:
    out = python("import sys; sys.modules['click'] = None\nfrom relay.entry import main; main()")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "outbox-relay: the relay needs its extra (missing click): pip install 'outbox-relay[relay]'"
    ]


def test_sample_app_passes_mypy_strict(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), "app.py"],
        cwd=TYPING_APP,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout
