"""The auth gate with an injected clock: pauses per cause and account, probes with the failing
rows themselves, backs off up to a cap, one state change per pause (invariant 12)."""

from relay.stripe.auth_gate import ACCOUNT_REFUSED, KEY_REFUSED, AuthGate
from relay.stripe.classify import for_answer
from tests.unit.rows import claimed

FORBIDDEN = for_answer("auth", "account_invalid", http_status=403)
UNAUTHORIZED = for_answer("auth", "api_key_expired", http_status=401)
OK = for_answer("ok")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, ready: list[bool] | None = None) -> AuthGate:
    states = ready if ready is not None else []
    return AuthGate(states.append, interval=10.0, cap=40.0, clock=clock)


def test_a_403_pauses_only_its_account() -> None:
    clock, ready = Clock(), []
    g = gate(clock, ready)
    revoked = claimed(id=1, stripe_account="acct_revoked")
    assert g.admit(revoked) is None
    assert g.settle(revoked, FORBIDDEN) is not None
    assert g.admit(claimed(id=2, stripe_account="acct_revoked")) is not None
    assert g.code_for(revoked) == ACCOUNT_REFUSED
    # Other accounts, and the platform account, keep sending; the relay stays ready.
    assert g.admit(claimed(id=3, stripe_account="acct_other")) is None
    assert g.admit(claimed(id=4, stripe_account=None)) is None
    assert ready == [True]


def test_a_401_pauses_every_account_and_the_relay_is_not_ready() -> None:
    clock, ready = Clock(), []
    g = gate(clock, ready)
    row = claimed(id=1)
    g.settle(row, UNAUTHORIZED)
    assert g.admit(claimed(id=2, stripe_account="acct_other")) is not None
    assert g.code_for(row) == KEY_REFUSED
    assert ready == [False]


def test_one_failing_row_is_the_probe_per_interval_and_the_interval_doubles_to_the_cap() -> None:
    clock = Clock()
    g = gate(clock)
    g.settle(claimed(id=1, stripe_account="acct_x"), FORBIDDEN)
    waits = []
    for _ in range(5):
        clock.now = g.paused["account", "acct_x"].probe_at
        probe = claimed(id=10, stripe_account="acct_x")
        assert g.admit(probe) is None  # the probe goes (through the rate limiter)
        assert g.admit(claimed(id=11, stripe_account="acct_x")) is not None  # only one
        g.settle(probe, FORBIDDEN)
        waits.append(g.paused["account", "acct_x"].interval)
    assert waits == [20.0, 40.0, 40.0, 40.0, 40.0]


def test_a_probe_that_gets_through_resumes_its_account_once() -> None:
    clock, ready = Clock(), []
    g = gate(clock, ready)
    g.settle(claimed(id=1, stripe_account="acct_x"), FORBIDDEN)
    g.settle(claimed(id=2, stripe_account="acct_x"), FORBIDDEN)  # already paused: no change
    assert len(ready) == 1
    clock.now += 10
    probe = claimed(id=3, stripe_account="acct_x")
    assert g.admit(probe) is None
    assert g.settle(probe, OK) is None
    assert g.paused == {}
    assert g.admit(claimed(id=4, stripe_account="acct_x")) is None
    assert len(ready) == 2  # paused, restored: one change each


def test_a_probe_whose_call_never_happened_lets_another_row_probe() -> None:
    clock = Clock()
    g = gate(clock)
    g.settle(claimed(id=1, stripe_account="acct_x"), FORBIDDEN)
    clock.now += 10
    probe = claimed(id=2, stripe_account="acct_x")
    assert g.admit(probe) is None
    g.release(probe)
    assert g.admit(claimed(id=3, stripe_account="acct_x")) is None
