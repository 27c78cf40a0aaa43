"""Startup and configuration failures as one line an operator can act on, with an exit code.

Exit code 2: the configuration is wrong; restarting without changing it will fail the same way
(systemd's `RestartPreventExitStatus=2` stops a restart loop). Exit code 1: something outside the
configuration failed (database unreachable, port held by another process); a restart may
succeed. Messages never echo an input value: a malformed database URL holds a password.
"""

import errno
import socket

from relay.core.logs import scrub

CONFIG_EXIT = 2
RUNTIME_EXIT = 1


class ConfigError(RuntimeError):
    """The relay cannot start with this configuration (the message says what to set)."""

    exit_code = CONFIG_EXIT


class StartupError(RuntimeError):
    """The configuration looks right but something it points at is not usable right now."""

    exit_code = RUNTIME_EXIT


class ServiceDied(RuntimeError):
    """A relay service met an error it does not retry (a bug): the relay drained and the
    process exits 1 so its supervisor restarts it (docs/design.md, "Errors: who retries
    what")."""

    exit_code = RUNTIME_EXIT

    def __init__(self, service: str, error: str) -> None:
        super().__init__(
            f"the relay's {service} service failed ({one_line(error)}) and the relay stopped: "
            "restart it (systemd and Kubernetes do); if it fails again, report the "
            "service_died log line"
        )


def one_line(text: str) -> str:
    """Collapse a library's multi-line message and mask anything secret-shaped."""
    return scrub(" ".join(part.strip() for part in text.splitlines() if part.strip()))


def database_error(err: BaseException) -> ConfigError | StartupError:
    """A failed connection, split into "fix the URL" (2) and "the server is not there" (1)."""
    text = one_line(str(err))
    lowered = text.lower()
    if "does not exist" in lowered:
        return ConfigError(
            f"the database or role named in OUTBOX_DATABASE_URL does not exist ({text}): "
            "create it or fix the URL, then run `outbox-relay migrate`"
        )
    if "authentication failed" in lowered or "no password supplied" in lowered:
        return ConfigError(
            f"the database refused the credentials in OUTBOX_DATABASE_URL ({text}): fix the "
            "user or password"
        )
    if "invalid" in lowered and ("uri" in lowered or "connection option" in lowered):
        return ConfigError(
            "OUTBOX_DATABASE_URL is not a valid PostgreSQL URL "
            "(postgresql://user:password@host:5432/dbname)"
        )
    return StartupError(
        f"cannot reach the database in OUTBOX_DATABASE_URL ({text}): check that it is running "
        "and reachable from here"
    )


def bind_error(host: str, port: int, err: OSError) -> ConfigError | StartupError:
    """The HTTP server could not listen: a port held by another process may free up (1); an
    address that is not this machine's, or a name that does not resolve, will not (2)."""
    if err.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} on {host} is in use by another process: stop it or set "
            "OUTBOX_HTTP_PORT to a free port"
        )
    if err.errno == errno.EACCES:
        return ConfigError(
            f"no permission to listen on port {port}: set OUTBOX_HTTP_PORT to 1024 or above"
        )
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"cannot listen on OUTBOX_HTTP_HOST={host}: not an address of this machine "
            "(use 127.0.0.1, 0.0.0.0 or one of its interface addresses)"
        )
    return StartupError(f"cannot listen on {host}:{port}: {one_line(str(err))}")
