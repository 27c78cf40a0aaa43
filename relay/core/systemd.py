"""sd_notify without a dependency: READY=1, WATCHDOG=1 and STOPPING=1 for Type=notify units."""

import os
import socket


def notify(state: str) -> bool:
    """Send `state` to systemd if started by it (NOTIFY_SOCKET set); False otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the unit's WatchdogSec, in seconds, when the watchdog is enabled for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
