"""Prometheus metrics, served at ``GET /metrics`` (docs/operations.md lists them).

The hot path (each frame, each delivery) only adds to plain integers and bucket counts held
here: no lock, no label lookup in prometheus_client. prometheus_client writes them out in its
text format when scraped, through a collector, with the gauges (open connections, queue depth)
read from the hub at that moment. Label values are bounded: inbound types are the registered
ones (any other counts as ``unknown``, a frame that is not a valid envelope as ``invalid``);
other labels get a series each up to a limit, then share ``other``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Generic, Hashable, Iterable, Iterator, TypeVar

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .event_loop import running
from .protocol import CloseCode, ErrorCode

if TYPE_CHECKING:
    from .hub import Hub

K = TypeVar("K", bound=Hashable)

#: seconds to enqueue one publication on every local recipient
FANOUT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                  0.1)
#: seconds from a frame's arrival to the end of its handler
HANDLER_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5)
INVALID = "invalid"  # the ``type`` label of a frame that is not a valid envelope (or binary)
UNKNOWN = "unknown"  # ... of a frame of a type no plugin handles
OTHER = "other"


class Counts(Generic[K]):
    """Integer counts by label value; past ``limit`` values, new ones add to ``overflow``."""

    __slots__ = ("values", "limit", "overflow")

    def __init__(self, limit: int, overflow: K) -> None:
        self.values: dict[K, int] = {}
        self.limit = limit
        self.overflow = overflow

    def add(self, key: K, n: int = 1) -> None:
        values = self.values
        if key in values:
            values[key] += n
        elif len(values) < self.limit:
            values[key] = n
        else:
            values[self.overflow] = values.get(self.overflow, 0) + n


class Histogram:
    """Observations in fixed buckets (upper bounds, inclusive) plus their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


def frame_type(payload: bytes) -> str:
    """The ``type`` of an encoded server frame, read from its first bytes (``frame()`` puts
    ``type`` first and ``encode()`` writes no spaces), without decoding it."""
    if payload.startswith(b'{"type":"'):
        end = payload.find(b'"', 9)
        if end > 9:
            return payload[9:end].decode("utf-8", "replace")
    return OTHER


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.opened = 0
        self.closed: Counts[int] = Counts(64, 0)  # by close code; 0: past the limit
        self.messages_out: Counts[str] = Counts(256, OTHER)
        self.errors: Counts[str] = Counts(64, OTHER)
        self.rate_limited = 0
        self.slow_consumers = 0
        self.backend_errors: Counts[str] = Counts(32, OTHER)
        self.http: Counts[tuple[str, str, int]] = Counts(512, (OTHER, OTHER, 0))
        self.fanout = Histogram(FANOUT_BUCKETS)
        #: by inbound type: its count is also messages_in
        self.handling: dict[str, Histogram] = {}
        self.track([])
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

    def track(self, types: Iterable[str]) -> None:
        """Count frames of ``types`` (the registered ones) under their own label."""
        self.handling = {t: Histogram(HANDLER_BUCKETS) for t in (*types, UNKNOWN, INVALID)}

    def watch(self, node_id: str, hub: "Hub") -> None:
        """Export through ``self.registry``, reading gauges from ``hub`` at scrape time."""
        self.registry.register(_Collector(self, node_id, hub))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- the hot path: plain additions ---------------------------------------------------------
    def frame_handled(self, type_: str, seconds: float) -> None:
        hist = self.handling.get(type_)
        if hist is None:
            hist = self.handling[UNKNOWN]
        hist.observe(seconds)

    def sent(self, type_: str, n: int = 1) -> None:
        self.messages_out.add(type_, n)

    def delivered(self, payload: bytes, n: int, seconds: float) -> None:
        """One publication enqueued on ``n`` local connections in ``seconds``."""
        self.fanout.observe(seconds)
        if n:
            self.messages_out.add(frame_type(payload), n)

    def frame_rejected(self, code: str) -> None:
        """An ``error`` frame answered a client frame."""
        self.errors.add(code)
        self.messages_out.add("error")
        if code == ErrorCode.RATE_LIMITED:
            self.rate_limited += 1

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self, code: int) -> None:
        self.closed.add(code)
        if code == CloseCode.SLOW_CONSUMER:
            self.slow_consumers += 1

    def backend_error(self, operation: str) -> None:
        """A backend call failed (for backends and the code that calls them)."""
        self.backend_errors.add(operation)

    def http_request(self, method: str, route: str, status: int) -> None:
        self.http.add((method, route, status))


def _loop_tasks() -> int | None:
    """Tasks not done on the running event loop (a scrape runs on it); None outside one."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


def _counter(name: str, doc: str, label: str, counts: Counts[K]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in counts.values.items():
        family.add_metric([str(key)], n)
    return family


class _Collector(Collector):
    def __init__(self, metrics: Metrics, node_id: str, hub: "Hub") -> None:
        self.metrics = metrics
        self.node_id = node_id
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        m, hub = self.metrics, self.hub
        conns = tuple(hub.connections.values())
        info = GaugeMetricFamily("switchboard_info", "This node (always 1)",
                                 labels=["node", "version", "event_loop"])
        info.add_metric([self.node_id, __version__, running() or "none"], 1)
        yield info
        yield GaugeMetricFamily("switchboard_uptime_seconds", "Seconds since the server started",
                                value=time.time() - m.started)
        yield GaugeMetricFamily("switchboard_draining", "1 while the server is shutting down",
                                value=1 if hub.draining else 0)
        yield GaugeMetricFamily("switchboard_connections",
                                "Open WebSocket connections on this node", value=len(conns))
        yield GaugeMetricFamily("switchboard_connected_users",
                                "Users with an open connection on this node",
                                value=len(hub.by_user))
        yield CounterMetricFamily("switchboard_connections_opened",
                                  "WebSocket connections opened (after authentication)",
                                  value=m.opened)
        yield _counter("switchboard_connections_closed",
                       "WebSocket connections closed, by close code (0: no close frame)", "code",
                       m.closed)
        messages_in = CounterMetricFamily("switchboard_messages_in",
                                          "Client frames handled, by type", labels=["type"])
        handler = HistogramMetricFamily("switchboard_handler_duration_seconds",
                                        "Seconds to take one client frame through the pipeline "
                                        "and its handler, by type", labels=["type"])
        for type_, hist in m.handling.items():
            messages_in.add_metric([type_], hist.count)
            handler.add_metric([type_], hist.cumulative(), hist.sum)
        yield messages_in
        yield handler
        yield _counter("switchboard_messages_out", "Frames queued to clients, by type", "type",
                       m.messages_out)
        yield _counter("switchboard_errors", "Error frames sent to clients, by code", "code",
                       m.errors)
        yield CounterMetricFamily("switchboard_rate_limited_frames",
                                  "Client frames refused with RATE_LIMITED", value=m.rate_limited)
        yield CounterMetricFamily("switchboard_slow_consumer_closes",
                                  "Connections closed as slow consumers (4008)",
                                  value=m.slow_consumers)
        yield GaugeMetricFamily("switchboard_outbound_queue_frames",
                                "Frames waiting in the outbound queues of all connections",
                                value=sum(c.queued for c in conns))
        yield GaugeMetricFamily("switchboard_outbound_queue_bytes",
                                "Bytes waiting in the outbound queues of all connections",
                                value=sum(c.queued_bytes for c in conns))
        yield GaugeMetricFamily("switchboard_outbound_queue_max_frames",
                                "The longest outbound queue, in frames",
                                value=max((c.queued for c in conns), default=0))
        fanout = HistogramMetricFamily(
            "switchboard_fanout_duration_seconds",
            "Seconds to enqueue one publication on every local recipient")
        fanout.add_metric([], m.fanout.cumulative(), m.fanout.sum)
        yield fanout
        yield _counter("switchboard_backend_errors", "Failed backend calls, by operation",
                       "operation", m.backend_errors)
        tasks = _loop_tasks()
        if tasks is not None:
            yield GaugeMetricFamily("switchboard_event_loop_tasks",
                                    "asyncio tasks not yet done on this node's event loop",
                                    value=tasks)
        http = CounterMetricFamily("switchboard_http_requests", "HTTP requests answered",
                                   labels=["method", "route", "status"])
        for (method, route, status), n in m.http.values.items():
            http.add_metric([method, route, str(status)], n)
        yield http
