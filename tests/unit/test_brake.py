"""The console's sign-in brake as a pure rule, on an injected clock."""

from relay.server.console.brake import FORGET_AFTER, FREE_FAILURES, MAX_WAIT, SignInBrake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_past_the_budget_wait_longer_and_longer() -> None:
    clock = Clock()
    brake = SignInBrake(clock)
    for n in range(1, FREE_FAILURES + 1):
        assert brake.failed("10.0.0.1") == (n, 0.0)
        assert brake.wait("10.0.0.1") == 0.0
    waits = []
    for _ in range(12):
        clock.now += brake.wait("10.0.0.1")  # the client waits out each brake, then fails
        waits.append(brake.failed("10.0.0.1")[1])
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert waits[-1] == MAX_WAIT and waits == sorted(waits)
    assert brake.wait("10.0.0.1") == MAX_WAIT
    assert brake.wait("10.0.0.2") == 0.0  # another client is not braked


def test_a_right_token_or_a_quiet_hour_clears_the_record() -> None:
    clock = Clock()
    brake = SignInBrake(clock)
    for _ in range(FREE_FAILURES + 3):
        brake.failed("a")
        brake.failed("b")
    brake.succeeded("a")
    assert brake.wait("a") == 0.0 and brake.failed("a") == (1, 0.0)
    clock.now += FORGET_AFTER + 1
    assert brake.wait("b") == 0.0 and brake.failed("b") == (1, 0.0)
