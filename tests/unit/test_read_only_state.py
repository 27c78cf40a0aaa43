"""A read-only database fails liveness (/healthz, systemd's watchdog) only past the grace."""

import time

from relay.pipeline.executor import RelayState


def test_read_only_past_the_grace_only() -> None:
    state = RelayState()
    assert not state.read_only_past(0.0)  # writable
    state.read_only_since = time.monotonic() - 30
    assert state.read_only_past(10.0)
    assert not state.read_only_past(60.0)
