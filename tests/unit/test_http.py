"""HTTP server limits as pure rules: the connection cap follows the process's file limit."""

import errno
import socket

from relay.core.errors import bind_error
from relay.server.http_server import FILES_KEPT, connection_limit


def test_the_cap_is_the_setting_when_files_allow() -> None:
    assert connection_limit(1000, files=65_536, stripe_connections=404) == 1000


def test_the_cap_leaves_files_for_stripe_and_the_database() -> None:
    assert connection_limit(1000, files=1024, stripe_connections=404) == 1024 - 404 - FILES_KEPT


def test_the_cap_never_drops_below_a_few_connections() -> None:
    assert connection_limit(1000, files=256, stripe_connections=404) == 8


def test_a_port_in_use_may_free_up_but_a_foreign_address_will_not() -> None:
    in_use = bind_error("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "in use"))
    foreign = bind_error("192.0.2.1", 8080, OSError(errno.EADDRNOTAVAIL, "cannot assign"))
    unknown = bind_error("nohost", 8080, socket.gaierror(-2, "Name or service not known"))
    assert in_use.exit_code == 1 and "OUTBOX_HTTP_PORT" in str(in_use)
    assert foreign.exit_code == unknown.exit_code == 2 and "OUTBOX_HTTP_HOST" in str(foreign)
