"""`outbox-relay emulator`: run the Stripe meter-events emulator in the foreground.

Prints one line `stripe emulator listening on http://HOST:PORT` once bound (scripts and the
benchmark read the port from it), then serves until SIGINT/SIGTERM. Secrets (the webhook
secret, API keys) are never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from relay.emulator.config import EmulatorConfig, Meter
from relay.emulator.emulator import Emulator
from relay.emulator.faults import Faults, Latency

DEFAULT_PORT = 12121


def parse_meter(spec: str) -> Meter:
    """`EVENT_NAME[:AGGREGATION[:CUSTOMER_KEY[:VALUE_KEY]]]` -> Meter."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 4:
        raise click.BadParameter(f"invalid meter spec {spec!r}")
    fields: dict[str, str] = {"event_name": parts[0]}
    for name, value in zip(("aggregation", "customer_key", "value_key"), parts[1:], strict=False):
        if value:
            fields[name] = value
    try:
        # The aggregation is any text here; Meter itself refuses an unknown one (ValueError).
        return Meter(**fields)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _limit(value: int | None, fallback: int | None) -> int | None:
    if value is None:
        return fallback
    return None if value <= 0 else value


def build_config(
    *,
    host: str,
    port: int,
    webhook_url: str | None,
    webhook_secret: str,
    seed: int,
    latency_ms: float,
    error_rate: float,
    meters: tuple[str, ...],
    customers: tuple[str, ...],
    rate_limit: int | None,
    rate_limit_live: int | None,
    rate_limit_test: int | None,
    concurrency_status: str,
    unknown_cancel: str,
    error_report_delay: float,
    summaries_lag: float = 0.0,
    summaries_jitter: float = 0.0,
    allow_negative_values: bool = False,
    allow_decimal_values: bool = False,
) -> EmulatorConfig:
    """Turn CLI options into an EmulatorConfig (kept separate so it can be unit-tested)."""
    faults = None
    if latency_ms > 0 or error_rate > 0:
        faults = Faults(
            latency=Latency.fixed(latency_ms) if latency_ms > 0 else None, rate_500=error_rate
        )
    defaults = EmulatorConfig()
    return EmulatorConfig(
        host=host,
        port=port,
        meters=tuple(parse_meter(m) for m in meters) if meters else defaults.meters,
        customers=customers or None,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        seed=seed,
        faults=faults,
        rate_limit_live=_limit(rate_limit_live, _limit(rate_limit, defaults.rate_limit_live)),
        rate_limit_test=_limit(rate_limit_test, _limit(rate_limit, defaults.rate_limit_test)),
        # Plain int/str from click.Choice, so one of the Literals; EmulatorConfig checks again.
        concurrency_status=int(concurrency_status),  # type: ignore[arg-type]
        unknown_cancel=unknown_cancel,  # type: ignore[arg-type]
        error_report_delay=error_report_delay,
        summaries_lag_seconds=summaries_lag,
        summaries_jitter_seconds=summaries_jitter,
        allow_negative_values=allow_negative_values,
        allow_decimal_values=allow_decimal_values,
    )


async def serve(config: EmulatorConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    emulator = await Emulator(config).start_async()
    click.echo(f"stripe emulator listening on {emulator.base_url}", nl=True)
    if config.webhook_url:
        click.echo(f"error reports are delivered (signed) to {config.webhook_url}")
    try:
        await stop.wait()
    finally:
        await emulator.stop_async()


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=int,
    help="Port to bind (0 = any free port).",
)
@click.option("--webhook-url", default=None, help="Where to POST signed error-report events.")
@click.option(
    "--webhook-secret",
    envvar="STRIPE_WEBHOOK_SECRET",
    default="whsec_test_emulator",
    show_default=False,
    show_envvar=True,
    help="Signing secret for webhooks.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Fault randomness seed.")
@click.option("--latency-ms", default=0.0, type=float, help="Added latency per API request.")
@click.option(
    "--error-rate", default=0.0, type=float, help="Fraction of API requests answered with a 500."
)
@click.option(
    "--meter",
    "meters",
    multiple=True,
    help="EVENT_NAME[:sum|count|last[:CUSTOMER_KEY[:VALUE_KEY]]] (repeatable; default: api_calls).",
)
@click.option(
    "--customer",
    "customers",
    multiple=True,
    help="Known customer id (repeatable; default: any cus_*).",
)
@click.option(
    "--rate-limit", default=None, type=int, help="Requests/second for both modes (0 = unlimited)."
)
@click.option("--rate-limit-live", default=None, type=int, help="Live-mode requests/second.")
@click.option("--rate-limit-test", default=None, type=int, help="Test-mode requests/second.")
@click.option(
    "--concurrency-status",
    type=click.Choice(["409", "429"]),
    default="409",
    show_default=True,
    help="Status for concurrent calls per (customer, meter).",
)
@click.option(
    "--unknown-cancel",
    type=click.Choice(["error", "accept"]),
    default="error",
    show_default=True,
    help="Answer to cancelling an unknown identifier.",
)
@click.option(
    "--error-report-delay",
    default=0.2,
    show_default=True,
    type=float,
    help="Seconds before pending error reports are emitted.",
)
@click.option(
    "--summaries-lag",
    default=0.0,
    show_default=True,
    type=float,
    help="Seconds before an event shows in meter event summaries (eventually consistent).",
)
@click.option(
    "--summaries-jitter",
    default=0.0,
    show_default=True,
    type=float,
    help="Up to this many more seconds of lag, drawn per event and read: two reads can disagree.",
)
@click.option("--allow-negative-values", is_flag=True, help="Accept negative meter values.")
@click.option("--allow-decimal-values", is_flag=True, help="Accept decimal meter values.")
def emulator(**options: object) -> None:
    """Run a local Stripe meter-events emulator (v1 events, adjustments, v2 stream,
    error-report webhooks, summaries) with fault injection and an inspectable ledger."""
    # click passes every option converted to the type its decorator declares (see above).
    config = build_config(**options)  # type: ignore[arg-type]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
