"""One OpenTelemetry SDK for the whole test session, read test by test.

OpenTelemetry's global providers can be set once per process, so the first test
that asks for `installed` sets a tracer provider (spans kept in memory, and
only while a test records them) and a meter provider (an in-memory reader and a
Prometheus reader on prometheus_client's default registry). Tests read metrics as
deltas from a snapshot, since the counters are cumulative for the whole session.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

Labels = frozenset[tuple[str, Any]]
Points = dict[tuple[str, Labels], float]


class _WhileRecording(SpanProcessor):
    """Passes finished spans on only while a test records them."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.inner = SimpleSpanProcessor(exporter)
        self.on = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Telemetry:
    """The session's SDK: what a test recorded."""

    exporter: InMemorySpanExporter
    processor: _WhileRecording
    reader: InMemoryMetricReader
    baseline: Points = field(default_factory=dict)

    @contextmanager
    def recording(self) -> Iterator[Telemetry]:
        """Keep the spans finished in the block, and measure metrics from its start."""
        self.exporter.clear()
        self.baseline = self.points()
        self.processor.on = True
        try:
            yield self
        finally:
            self.processor.on = False

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Spans finished while recording (named ``name``)."""
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def points(self) -> Points:
        """Every data point now: counters' and gauges' values, histograms' counts
        (as ``<name>.count``) and sums (``<name>.sum``)."""
        found: Points = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        labels: Labels = frozenset((point.attributes or {}).items())
                        if isinstance(metric.data, Histogram):
                            found[(metric.name + ".count", labels)] = point.count  # type: ignore[union-attr]
                            found[(metric.name + ".sum", labels)] = point.sum  # type: ignore[union-attr]
                        elif isinstance(metric.data, Sum | Gauge):
                            found[(metric.name, labels)] = point.value  # type: ignore[union-attr]
        return found

    def delta(self, name: str, **labels: Any) -> float:
        """How much ``name`` with exactly ``labels`` grew since recording began."""
        key = (name, frozenset(labels.items()))
        return self.points().get(key, 0) - self.baseline.get(key, 0)

    def value(self, name: str, **labels: Any) -> float | None:
        """A gauge's value now (``None`` when it never had one)."""
        return self.points().get((name, frozenset(labels.items())))

    def labels(self) -> list[Mapping[str, Any]]:
        """The labels of every point that changed since recording began."""
        now = self.points()
        return [
            dict(labels)
            for key, labels in now
            if now[(key, labels)] != self.baseline.get((key, labels))
        ]

    def attribute_values(self) -> list[Any]:
        """Every attribute value of every recorded span and span event."""
        values: list[Any] = []
        for span in self.spans():
            values.extend((span.attributes or {}).values())
            for event in span.events:
                values.extend((event.attributes or {}).values())
            if span.status.description:
                values.append(span.status.description)
        return values


_installed: Telemetry | None = None


def installed() -> Telemetry:
    """The session's SDK, set as OpenTelemetry's global providers on first use."""
    global _installed
    if _installed is None:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            raise RuntimeError("a tracer provider was set before the tests' own")
        exporter = InMemorySpanExporter()
        processor = _WhileRecording(exporter)
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(processor)
        trace.set_tracer_provider(tracer_provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader, PrometheusMetricReader()]))
        _installed = Telemetry(exporter, processor, reader)
    return _installed
