"""The supervisor's Services: one dies, all stop; stopping survives an absorbed cancellation."""

import asyncio
import contextlib

import structlog.testing

from relay.pipeline.supervisor import Services


async def test_a_service_that_fails_sets_stop_and_logs_service_died() -> None:
    stop = asyncio.Event()
    services = Services(stop)

    async def broken() -> None:
        raise ValueError("bug")

    with structlog.testing.capture_logs() as logs:
        services.start("broken", broken())
        await asyncio.wait_for(stop.wait(), 1)
    assert [(e["event"], e["service"], e["error"]) for e in logs] == [
        ("service_died", "broken", "ValueError('bug')")
    ]


async def test_a_service_that_returns_before_the_stop_signal_has_died() -> None:
    stop = asyncio.Event()
    services = Services(stop)

    async def quits() -> None:
        return None

    with structlog.testing.capture_logs() as logs:
        services.start("quits", quits())
        await asyncio.wait_for(stop.wait(), 1)
    assert logs[0]["error"] == "returned before the stop signal"


async def test_stopping_is_not_a_death() -> None:
    stop = asyncio.Event()
    services = Services(stop)
    with structlog.testing.capture_logs() as logs:
        services.start("loop", asyncio.Event().wait())
        await asyncio.sleep(0)
        await services.stop_all()
    assert not stop.is_set() and logs == []


async def test_a_service_that_absorbs_one_cancellation_is_still_stopped() -> None:
    stop = asyncio.Event()
    services = Services(stop)

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # e.g. swallowed inside a driver
            await asyncio.Event().wait()
        await asyncio.Event().wait()  # loops on

    services.start("stubborn", stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(services.stop("stubborn"), 2)
    assert not services.running("stubborn")
