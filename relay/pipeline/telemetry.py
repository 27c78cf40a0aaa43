"""OpenTelemetry for the relay (the `otel` extra, switched on by OUTBOX_OTEL=true).

Spans: `outbox.claim` per claim batch, `stripe.call` per Stripe call (one row on v1, a batch on
the v2 stream) linked to the trace context each fact was recorded in (the application's request,
stored by record_usage), and `outbox.record_outcomes` per outcome batch, with the attributes
on-call looks for: identifier, account, meter (event name), HTTP status, Stripe request id,
outcome state and code. Metrics: every Prometheus metric of the relay is also exported by OTLP,
and the table gauges (backlog, lag, live relays, drift) are refreshed for it as a scrape would.
Exporters are configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, ...).

This module imports OpenTelemetry at the top: only the daemon imports it, and only when the
setting is on, so without it nothing of OpenTelemetry is loaded (relay/core/tracing.py).
"""

import asyncio
import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import REGISTRY

from relay import __version__
from relay.core import metrics, tracing
from relay.core.config import Settings
from relay.core.retryable import RETRYABLE
from relay.core.rows import Claimed, Outcome
from relay.core.vocabulary import State
from relay.db.store import ConsoleStore, Store

log = structlog.get_logger()

# Outcome states that mean the call did not do what it was for.
_ERROR_STATES: frozenset[State] = frozenset({"failed", "rejected"})
# Identifiers listed on one span at most (a v2 stream call carries up to 100 rows).
_MAX_LISTED = 100
# How often the table gauges are read for OTLP when nothing scrapes /metrics.
REFRESH_SECONDS = 15.0


def parse_traceparent(text: str) -> SpanContext | None:
    """A stored W3C traceparent as a remote span context, or None if it is not one."""
    parts = text.split("-")
    if len(parts) != 4 or parts[0] != "00":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return context if context.is_valid else None


@dataclass
class OtelTracer:
    """relay.core.tracing.Tracer on OpenTelemetry spans, written after the work they time."""

    tracer: trace.Tracer
    store: Store
    relay_id: str
    # Recorded trace contexts of rows claimed and not yet written back (the call links them).
    links: dict[int, SpanContext] = field(default_factory=dict)

    async def claimed(self, rows: Sequence[Claimed], start_ns: int) -> None:
        span = self.tracer.start_span(
            "outbox.claim",
            start_time=start_ns,
            attributes={"outbox.rows": len(rows), "outbox.relay_id": self.relay_id},
        )
        try:
            stored = await self.store.trace_contexts([row.id for row in rows])
        except RETRYABLE as err:  # the database's error never stops the sending: calls go unlinked
            log.warning("trace_contexts_failed", error=str(err))
            stored = {}
        for row_id, text in stored.items():
            context = parse_traceparent(text)
            if context is not None:
                self.links[row_id] = context
        span.end()

    def called(self, outcomes: Sequence[Outcome], start_ns: int) -> None:
        if not outcomes:
            return
        links = [Link(c) for c in (self.links.get(o.row.id) for o in outcomes) if c]
        span = self.tracer.start_span(
            "stripe.call",
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            links=links,
            attributes=_call_attributes(outcomes),
        )
        first = outcomes[0]
        if first.state in _ERROR_STATES or (first.http_status or 0) >= 500:
            span.set_status(Status(StatusCode.ERROR, first.code or first.state))
        span.end()

    def written(self, outcomes: Sequence[Outcome], start_ns: int) -> None:
        for outcome in outcomes:
            self.links.pop(outcome.row.id, None)
        states: dict[str, int] = {}
        for outcome in outcomes:
            states[outcome.state] = states.get(outcome.state, 0) + 1
        attributes: dict[str, Any] = {"outbox.rows": len(outcomes)}
        attributes.update({f"outbox.rows.{state}": n for state, n in states.items()})
        self.tracer.start_span(
            "outbox.record_outcomes", start_time=start_ns, attributes=attributes
        ).end()


def _call_attributes(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    first = outcomes[0]
    rows = [o.row for o in outcomes]
    values: dict[str, Any] = {
        "stripe.account": first.row.stripe_account or "platform",
        "stripe.meter": sorted({r.event_name for r in rows}),
        "outbox.action": first.row.action,
        "outbox.state": first.state,
        "outbox.code": first.code,
        "outbox.rows": len(rows),
        "http.response.status_code": first.http_status,
        "stripe.request_id": first.request_id,
    }
    if len(rows) == 1:
        values["outbox.identifier"] = first.row.identifier
        values["stripe.meter"] = first.row.event_name
    else:
        values["outbox.identifiers"] = [r.identifier for r in rows[:_MAX_LISTED]]
    return {key: value for key, value in values.items() if value is not None}


# The sample names each Prometheus metric type exposes, and how OTLP carries them.
_SAMPLES = {
    "counter": (("_total", "counter"),),
    "histogram": (("_bucket", "counter"), ("_count", "counter"), ("_sum", "counter")),
}


def _observe(name: str) -> Any:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(sample.value, dict(sample.labels))
            for family in REGISTRY.collect()
            for sample in family.samples
            if sample.name == name
        ]

    return observe


def bridge_prometheus(provider: MeterProvider) -> None:
    """Every sample name of the relay's Prometheus registry as an OTLP instrument of the same
    name: counters and histogram buckets, counts and sums as cumulative observable counters,
    the rest as observable gauges (read from the registry at each export)."""
    meter = provider.get_meter("outbox-relay", __version__)
    kinds: dict[str, str] = {}
    for family in REGISTRY.collect():  # by type, not samples: a labelled metric has none yet
        if not family.name.startswith("outbox_relay"):
            continue
        for suffix, kind in _SAMPLES.get(family.type, (("", "gauge"),)):
            kinds[family.name + suffix] = kind
    for name, kind in kinds.items():
        if kind == "counter":
            meter.create_observable_counter(name, callbacks=[_observe(name)])
        else:
            meter.create_observable_gauge(name, callbacks=[_observe(name)])


@dataclass
class Telemetry:
    """What `start` set up; `stop` flushes and ends it."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    refresher: asyncio.Task[None]

    async def stop(self) -> None:
        tracing.active = None
        self.refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.refresher
        await asyncio.to_thread(self.tracer_provider.shutdown)
        await asyncio.to_thread(self.meter_provider.shutdown)


def start(
    settings: Settings,
    store: Store,
    auth_ok: Any,
    span_processor: SpanProcessor | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Install the tracer the pipeline reports to and the OTLP metrics. The processor and
    reader default to OTLP exporters (OTEL_* variables); tests pass in-memory ones."""
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "outbox-relay"),
            "service.version": __version__,
            "service.instance.id": settings.relay_id,
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(span_processor or _otlp_spans())
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[metric_reader or _otlp_metrics()]
    )
    bridge_prometheus(meter_provider)
    tracer = tracer_provider.get_tracer("outbox-relay", __version__)
    tracing.active = OtelTracer(tracer, store, settings.relay_id)
    refresh = metrics.ScrapeRefresh(
        ConsoleStore(store.pool, settings.relay_stale_after), settings.stripe_api_mode
    )
    refresher = asyncio.create_task(_refresh_tables(refresh, auth_ok), name="otel_refresh")
    return Telemetry(tracer_provider, meter_provider, refresher)


async def _refresh_tables(refresh: metrics.ScrapeRefresh, auth_ok: Any) -> None:
    """The table gauges as a /metrics scrape would read them, for OTLP-only set-ups."""
    while True:
        await refresh(auth_ok())
        await asyncio.sleep(REFRESH_SECONDS)


def _otlp_spans() -> SpanProcessor:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


def _otlp_metrics() -> MetricReader:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return PeriodicExportingMetricReader(OTLPMetricExporter())
