"""structlog JSON logging, with a last-line filter that scrubs anything secret-shaped.

The code never logs keys or passwords on purpose; the filter is the safety net for error
messages from libraries that might echo a URL or header.
"""

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET = re.compile(
    r"(sk|rk|pk)_(live|test)_[A-Za-z0-9]+|whsec_[A-Za-z0-9_]+|ek_(live|test)_[A-Za-z0-9]+"
    r"|(?<=://)([^:/@\s]+):([^@/\s]+)@"
)


def scrub(text: str) -> str:
    """Replace API keys, webhook secrets and URL passwords with placeholders."""
    return _SECRET.sub(lambda m: f"{m.group(4)}:***@" if m.group(4) else "***", text)


def _scrub_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    return {k: scrub(v) if isinstance(v, str) else v for k, v in event.items()}


_json = False


def is_json() -> bool:
    """Whether `configure` set up JSON lines (then even a fatal error is one JSON line)."""
    return _json


def configure(level: str = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """JSON lines on stderr (journald and Kubernetes collect them as they are).

    Libraries log through the standard `logging` module (psycopg_pool's connection errors,
    alembic's migration context, aiohttp's server errors, asyncio): their records go through
    the same processors and renderer as the relay's own events, so every line on stderr is
    one JSON object and a traceback is a string field of it, never lines of its own.
    """
    global _json
    _json = json
    stream = stream or sys.stderr
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    stamped: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    quiet = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
    for chatty in ("stripe", "alembic"):  # per-request / per-connection INFO lines
        logging.getLogger(chatty).setLevel(quiet)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def fatal(message: str, exit_code: int, error: BaseException | None = None) -> None:
    """The last line of a process that cannot go on: what to fix and the exit code. `error`
    (an unexpected one, a bug) adds its traceback as a field of the same line."""
    structlog.get_logger("relay").error(
        "fatal", error=message, exit_code=exit_code, exc_info=error or False
    )
