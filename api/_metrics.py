"""Prometheus metrics: the runtime's own counters, read at scrape time (so the hot path
pays nothing), the HTTP layer's counters and latency histograms, and the standard
``process_*`` and ``python_*`` collectors.

Every label has a bounded set of values, whatever clients send: ``method`` is one of
:data:`METHODS` or ``other``, ``route`` is a route's template (``/api/v1/plugins/<name>``,
a plugin's ``/api/v1/web/items/{item}``) or ``<unmatched>``, ``plugin`` is a loaded
plugin's registered name, ``actor`` an actor's path, ``status`` a status the daemon
answered with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cws_actors import ActorSnapshot, Runtime

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
"""The methods that are their own ``method`` label value (RFC 9110's and PATCH)."""

UNMATCHED = "<unmatched>"
"""The ``route`` label of a request that matched no route (404, 405, refused early)."""


def method_label(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else ``other``: a client's made-up
    method (``BAZ27862``) must not become a label value, one new series each."""
    return method if method in METHODS else "other"


class RuntimeCollector(Collector):
    """Routed, delivered and rejected messages per actor and reason, mailbox depth,
    restarts and probe failures, from the runtime's snapshots."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        routed = CounterMetricFamily(
            "cws_messages_routed", "Messages admitted to an actor's mailbox", labels=["actor"]
        )
        delivered = CounterMetricFamily(
            "cws_messages_delivered", "Messages taken from a mailbox by its actor", labels=["actor"]
        )
        rejected = CounterMetricFamily(
            "cws_messages_rejected",
            "Messages the router refused, by reason",
            labels=["actor", "reason"],
        )
        depth = GaugeMetricFamily("cws_mailbox_depth", "Messages waiting", labels=["actor"])
        handling = GaugeMetricFamily(
            "cws_actor_handling", "Messages being handled now (in flight)", labels=["actor"]
        )
        concurrency = GaugeMetricFamily(
            "cws_actor_max_concurrency", "Messages the actor handles at once", labels=["actor"]
        )
        restarts = CounterMetricFamily("cws_actor_restarts", "Restarts", labels=["actor"])
        probe_failures = GaugeMetricFamily(
            "cws_probe_consecutive_failures",
            "Consecutive failures of each probe",
            labels=["actor", "probe"],
        )
        ready = GaugeMetricFamily("cws_actor_ready", "1 when the actor is ready", labels=["actor"])
        late = CounterMetricFamily(
            "cws_late_replies",
            "Asks handled after their asker had timed out",
            labels=["actor"],
        )
        counts = self.runtime.routing_statistics()
        for node in _actors(self.runtime.actors()):
            restarts.add_metric([node.path], node.restarts)
            ready.add_metric([node.path], 1.0 if node.ready else 0.0)
            if node.path in counts.routed:
                routed.add_metric([node.path], counts.routed[node.path])
            if node.mailbox is not None:
                delivered.add_metric([node.path], node.mailbox.delivered)
                depth.add_metric([node.path], node.mailbox.depth)
                handling.add_metric([node.path], node.handling)
                concurrency.add_metric([node.path], node.max_concurrency)
            for probe in node.probes:
                probe_failures.add_metric([node.path, probe.kind.value], probe.consecutive_failures)
        for (path, reason), count in sorted(counts.rejected.items()):
            rejected.add_metric([path, reason], count)
        for path, count in sorted(counts.late.items()):
            late.add_metric([path], count)
        yield from (routed, delivered, rejected, depth, handling, concurrency, restarts)
        yield from (probe_failures, ready, late)


def _actors(node: ActorSnapshot) -> Iterator[ActorSnapshot]:
    if node.kind == "actor":
        yield node
    for child in node.children:
        yield from _actors(child)


class Metrics:
    """One registry per daemon (tests run several in one process)."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RuntimeCollector(runtime))
        # The standard collectors (the ones prometheus_client registers globally), in
        # this daemon's registry: process_* (CPU, memory, open files, start time) and
        # python_* (version, garbage collections). They read process-wide facts.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self.requests = Counter(
            "cws_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "cws_rate_limited_requests",
            "HTTP requests answered 429",
            ["route"],
            registry=self.registry,
        )
        self.plugin_latency = Histogram(
            "cws_plugin_handler_seconds",
            "Time from routing a request to a plugin to its answer",
            ["plugin", "kind"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
