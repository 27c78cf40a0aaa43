"""401/403: what pauses, what keeps going, how the refused rows are retried (invariant
12: failures stay local)."""

import time

import psycopg

from relay.db import operations as ops
from relay.emulator import Emulator, EmulatorConfig
from tests.support.relay import accepted, make_settings, row, running_relay, states

ACCOUNTS = {"acct_revoked": "cus_r", "acct_ok": "cus_o", None: "cus_p"}


def _record(database_url: str, per_account: int) -> None:
    with psycopg.connect(database_url) as conn:
        for account, customer in ACCOUNTS.items():
            for i in range(per_account):
                conn.execute(
                    "SELECT outbox_record_usage('api_calls', %s, 1, %s, stripe_account => %s)",
                    (f"{customer}{i}", f"{customer}-{i}", account),
                )


async def test_a_revoked_account_waits_without_blocking_the_others(database_url, capsys):
    """A 403 for one connected account pauses that account only; one of its own rows probes
    per backoff interval (through the rate limiter, doubling up to the cap); its rows wait with
    a code `status` shows; one log line when it pauses, one when it resumes."""
    _record(database_url, 3)
    config = EmulatorConfig(revoked_accounts={"acct_revoked"}, rate_limit_test=None)
    with Emulator(config) as emulator:
        settings = make_settings(
            database_url, emulator, auth_probe_interval=0.2, auth_probe_max_interval=0.8
        )
        async with running_relay(settings) as relay:
            gate = relay.relay.executor.auth

            async def backed_off_to_the_cap() -> bool:
                pause = gate.paused.get(("account", "acct_revoked"))
                return (
                    await accepted(database_url, 6)
                    and pause is not None
                    and (pause.interval == 0.8)
                    # between two probes: no probe row in flight
                    and states(database_url) == {"accepted": 6, "pending": 3}
                )

            await relay.until(backed_off_to_the_cap)
            assert relay.relay.state.auth_ok  # the key works: still ready
            assert states(database_url) == {"accepted": 6, "pending": 3}
            waiting = row(database_url, "cus_r-0")
            assert (waiting["last_error_code"], waiting["attempts"]) == (
                "account_access_refused",
                0,
            )
            with ops.connect(database_url) as conn:
                held = ops.status(conn)["unsent"]["buckets"]["held_auth"]
                assert held["rows"] == 3
                assert [(g["code"], g["stripe_account"], g["rows"]) for g in held["groups"]] == [
                    ("account_access_refused", "acct_revoked", 3)
                ]
            # The three rows sent before the pause, then one probe per interval: no hot loop.
            assert emulator.requests(status=403) <= 3 + 3
            emulator.set_revoked_accounts(set())  # access granted again
            await relay.until(lambda: accepted(database_url, 9))
    logged = capsys.readouterr().out
    assert logged.count("stripe_auth_paused") == 1
    assert logged.count("stripe_auth_restored") == 1


async def test_liveness_keeps_turning_while_the_key_is_refused(database_url):
    """Liveness is not readiness: while sending waits on a refused key, /readyz fails but the
    producer's loop (what /healthz and the systemd watchdog watch) keeps turning."""
    _record(database_url, 1)
    config = EmulatorConfig(api_keys={"sk_test_valid"}, rate_limit_test=None)
    with Emulator(config) as emulator:
        settings = make_settings(database_url, emulator, stripe_api_key="sk_test_revoked")
        async with running_relay(settings) as relay:
            state = relay.relay.state

            async def refused() -> bool:
                return not state.auth_ok

            await relay.until(refused)
            paused_at = time.monotonic()

            async def still_turning() -> bool:
                return state.last_loop > paused_at

            await relay.until(still_turning)
    assert states(database_url) == {"pending": 3}
