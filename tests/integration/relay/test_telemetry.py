"""OpenTelemetry (the `otel` extra): record_usage stores the caller's trace context, the relay's
span for the Stripe call links to it, claim/call/outcome-write spans carry what on-call needs,
the Prometheus metrics go out by OTLP too; without it, nothing of OpenTelemetry is imported.
Checked with the SDK's in-memory exporter and reader against a real relay and the emulator."""

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

import outbox
from relay.core import tracing
from relay.core.config import Settings
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator
from relay.pipeline import telemetry
from tests.helpers import rows
from tests.support.relay import running_relay, states

APP_TRACER = TracerProvider().get_tracer("the-application")


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def usage(identifier: str, event_name: str = "api_calls") -> dict[str, object]:
    return {"event_name": event_name, "customer": "cus_1", "value": 2, "identifier": identifier}


def test_record_usage_stores_the_callers_trace_context(database_url: str, db) -> None:
    with psycopg.connect(database_url) as conn:
        with APP_TRACER.start_as_current_span("POST /orders") as span:
            outbox.record_usage(conn, **usage("traced"))
            outbox.record_usage_many(conn, [usage("batch-1"), usage("batch-2")])
        outbox.record_usage(conn, **usage("untraced"))
        conn.commit()
    expected = traceparent(span.get_span_context())
    assert rows(db, "SELECT identifier, trace_context FROM meter_event_outbox ORDER BY id") == [
        ("traced", expected),
        ("batch-1", expected),
        ("batch-2", expected),
        ("untraced", None),
    ]


@asynccontextmanager
async def telemetry_on(
    settings: Settings,
) -> AsyncIterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    pool = make_pool(settings.database_url)
    await pool.open(wait=True)
    started = telemetry.start(
        settings, Store(pool), lambda: True, SimpleSpanProcessor(spans), reader
    )
    try:
        yield spans, reader
    finally:
        await started.stop()
        await pool.close()
    assert tracing.active is None


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_relay_spans_link_the_stripe_call_to_the_recorded_trace(
    database_url: str, emulator: Emulator, settings: Settings
) -> None:
    with psycopg.connect(database_url) as conn:
        with APP_TRACER.start_as_current_span("POST /orders") as request:
            outbox.record_usage(conn, **usage("traced"))
        outbox.record_usage(conn, **usage("untraced"))
        outbox.record_usage(conn, **usage("third"))
        conn.commit()
    emulator.fail_next(1, status=503, path="/v1/billing/meter_events")
    async with telemetry_on(settings) as (exporter, reader), running_relay(settings) as relay:

        async def sent() -> bool:
            return states(database_url).get("pending", 0) == 0

        await relay.until(sent)
        metrics = reader.get_metrics_data()
    spans = exporter.get_finished_spans()
    assert sum(span.attributes["outbox.rows"] for span in named(spans, "outbox.claim")) == 4
    assert sum(s.attributes["outbox.rows"] for s in named(spans, "outbox.record_outcomes")) == 4
    calls = named(spans, "stripe.call")
    failed = [span for span in calls if span.attributes["http.response.status_code"] == 503]
    assert len(failed) == 1 and failed[0].status.is_ok is False
    accepted = {
        span.attributes["outbox.identifier"]: span
        for span in calls
        if span.attributes["outbox.state"] == "accepted"
    }
    assert set(accepted) == {"traced", "untraced", "third"} and len(calls) == 4
    traced = accepted["traced"]
    assert [link.context.span_id for link in traced.links] == [request.get_span_context().span_id]
    assert traced.links[0].context.trace_id == request.get_span_context().trace_id
    assert accepted["untraced"].links == ()
    assert traced.attributes["stripe.account"] == "platform"
    assert traced.attributes["stripe.meter"] == "api_calls"
    assert traced.attributes["http.response.status_code"] == 200
    assert traced.attributes["outbox.state"] == "accepted"
    assert str(traced.attributes["stripe.request_id"]).startswith("req_")
    assert traced.start_time < traced.end_time
    assert metrics is not None
    exported = {
        metric.name: metric
        for resource in metrics.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    claimed = exported["outbox_relay_claimed_rows_total"].data.data_points
    assert sum(point.value for point in claimed) >= 3
    assert "outbox_relay_backlog_rows" in exported
    assert "outbox_relay_stripe_latency_seconds_bucket" in exported


def test_without_the_setting_nothing_of_opentelemetry_is_imported(database_url: str) -> None:
    """The library and the whole relay pipeline load, and usage is recorded, without importing
    OpenTelemetry (it is installed here: the otel extra is part of the test extra)."""
    script = (
        "import sys, psycopg, outbox, relay.daemon, relay.pipeline.supervisor, relay.cli.commands\n"
        f"with psycopg.connect({database_url!r}) as conn:\n"
        "    outbox.record_usage(conn, event_name='api_calls', customer='cus_1', value=1,"
        " identifier='x')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_otel_without_the_extra_is_a_one_line_configuration_error() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from relay import daemon\n"
        "from relay.core.errors import ConfigError\n"
        "try:\n"
        "    daemon._telemetry_module()\n"
        "except ConfigError as err:\n"
        "    print(err.exit_code, err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "2 OUTBOX_OTEL=true needs OpenTelemetry: pip install 'outbox-relay[otel]'"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00-abc",
        "01-" + "1" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
    ],
)
def test_a_malformed_stored_traceparent_is_no_link(text: str) -> None:
    assert telemetry.parse_traceparent(text) is None
