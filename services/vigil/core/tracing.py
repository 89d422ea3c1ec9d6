"""Tracing with OpenTelemetry: every hop of a failover is a span, linked across services.

A published event carries the W3C ``traceparent`` of the span that published it in its NATS
headers; the handler that receives it continues that trace. So a node loss is one trace:
membership's ``node_lost`` -> placement's decision -> address acquired -> app started.

Spans are recorded always (cheaply) and exported only when asked: ``VIGIL_TRACE=console`` prints
them as JSON on stderr (the service's log). Any other OpenTelemetry exporter can be added through
the SDK's usual environment variables once its package is installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_tracer = trace.get_tracer("vigil")


def setup(service: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": f"vigil-{service}"}))
    if os.environ.get("VIGIL_TRACE") == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)


def headers() -> dict[str, str] | None:
    """The current trace context as NATS headers, or None outside any span."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier or None


def context_of(msg_headers: Mapping[str, str] | None) -> Context:
    return extract(dict(msg_headers or {}))


@contextmanager
def span(name: str, parent: Context | None = None, **attributes: str) -> Iterator[None]:
    with _tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.CONSUMER if parent else trace.SpanKind.INTERNAL,
        attributes=attributes,
    ):
        yield
