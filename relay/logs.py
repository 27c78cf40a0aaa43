"""structlog JSON logging, with a last-line filter that scrubs anything secret-shaped.

The code never logs keys or passwords on purpose; the filter is the safety net for error
messages from libraries that might echo a URL or header.
"""

import logging
import re
import sys
from typing import Any

import structlog

_SECRET = re.compile(
    r"(sk|rk|pk)_(live|test)_[A-Za-z0-9]+|whsec_[A-Za-z0-9_]+|ek_(live|test)_[A-Za-z0-9]+"
    r"|(?<=://)([^:/@\s]+):([^@/\s]+)@"
)


def scrub(text: str) -> str:
    """Replace API keys, webhook secrets and URL passwords with placeholders."""
    return _SECRET.sub(lambda m: f"{m.group(4)}:***@" if m.group(4) else "***", text)


def _scrub_processor(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub(v) if isinstance(v, str) else v for k, v in event.items()}


class _ScrubFilter(logging.Filter):
    """Scrubs stdlib log records too (the stripe SDK and aiohttp log through logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def configure(level: str = "INFO", json: bool = True) -> None:
    """JSON lines on stderr (journald and Kubernetes collect them as they are)."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ScrubFilter())
    logging.getLogger("stripe").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
