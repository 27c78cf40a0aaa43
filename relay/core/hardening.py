"""Keep the process's secrets out of core dumps and away from same-user debuggers.

The relay holds the Stripe key, the webhook secret, the console token and the database
password in memory. A core dump (systemd's watchdog answers a stall with SIGABRT) would write
them to disk where crash collectors pick them up; a non-dumpable process gets none, and other
processes of the same user cannot ptrace it or read its /proc memory either.
"""

import ctypes
import resource
import sys

PR_SET_DUMPABLE = 4


def no_core_dumps() -> bool:
    """No core file (RLIMIT_CORE 0) and, on Linux, not dumpable; True when both took."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # a libc without prctl: the rlimit still holds
        return False
