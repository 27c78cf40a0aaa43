"""The trace context record_usage stores with a fact, when the application uses OpenTelemetry.

Nothing here imports OpenTelemetry: an application that uses it has imported it already, and
one that does not pays one dictionary lookup per call. The context is stored as a W3C
`traceparent` (version-trace_id-span_id-flags), the form every tracer reads.
"""

import sys


def current_traceparent() -> str | None:
    """The active span's traceparent, or None (no OpenTelemetry, or no span recording)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
