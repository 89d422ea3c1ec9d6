"""Every hop is a span, and a handler continues the trace of the event it received."""

from __future__ import annotations

import asyncio
import uuid

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vigil.core import tracing
from vigil.core.bus import Bus
from vigil.core.subjects import Subjects
from vigil.wire.events import NodeLost, PlacementDecided

EXPORTER = InMemorySpanExporter()


def setup_module() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_a_chain_of_handlers_is_one_trace(nats_url: str) -> None:
    subjects = Subjects(f"t{uuid.uuid4().hex[:8]}")
    first = await Bus.connect([nats_url], subjects, "membership", name="m", persistent=False)
    second = await Bus.connect([nats_url], subjects, "placement", name="p", persistent=False)
    done = asyncio.get_running_loop().create_future()

    async def decide(event: NodeLost) -> None:  # placement: node lost -> a decision
        await second.publish(
            subjects.placement("web1"),
            PlacementDecided(
                **second.stamp(),
                group="web1",
                node="n2",
                previous=event.node,
                epoch=2,
                reason="node n1 lost",
            ),
        )

    async def acquired(event: PlacementDecided) -> None:  # address: the decision arrives
        done.set_result(event)

    try:
        await second.subscribe(subjects.node_lost("n1"), NodeLost, decide)
        await first.subscribe(subjects.placement("web1"), PlacementDecided, acquired)
        # the server has both subscriptions before the first publish (two connections: without
        # a round trip each, the node_lost could reach the server before placement's SUB)
        await first.nc.flush()
        await second.nc.flush()
        with tracing.span("node lost", node="n1"):
            await first.publish(
                subjects.node_lost("n1"), NodeLost(**first.stamp(), node="n1", silent_for=0.8)
            )
        await asyncio.wait_for(done, 10)
    finally:
        await first.close()
        await second.close()
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    root, hop1, hop2 = spans["node lost"], spans["on node_lost"], spans["on placement_decided"]
    assert root.context is not None and hop1.context is not None and hop2.context is not None
    assert hop1.context.trace_id == root.context.trace_id == hop2.context.trace_id
    assert hop1.parent is not None and hop1.parent.span_id == root.context.span_id
    assert hop2.parent is not None and hop2.parent.span_id == hop1.context.span_id
