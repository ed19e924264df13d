"""
Prometheus metrics for ``--metrics DESCRIPTION``.

A collector reads capserv's own counters when scraped (nothing is updated
per packet), and prometheus-client's Twisted resource serves them in the
text format on any stream endpoint.  prometheus-client is an optional extra:
``pip install 'capserv[metrics]'``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from capserv.tcp import UppercaseFactory
from capserv.udp import DatagramState

__all__ = ["CapservCollector", "metrics_site"]

REFUSAL_LIMITS = ("max_connections", "max_connections_per_ip", "shutdown")
DROP_REASONS = ("rate_limit", "oversize", "low_port", "send_error")


class CapservCollector:
    """
    Turn a stream factory's and the datagram state's counters into metrics.
    """

    def __init__(self, factory: UppercaseFactory, datagram: DatagramState, workers: int = 1) -> None:
        self.factory = factory
        self.datagram = datagram
        self.workers = workers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        tcp = self.factory.snapshot()
        udp = self.datagram.snapshot()
        yield GaugeMetricFamily(
            "capserv_connections_active", "TCP connections open now.", value=tcp["connections_active"]
        )
        yield CounterMetricFamily(
            "capserv_connections", "TCP connections accepted and served.", value=tcp["connections_total"]
        )
        refused = CounterMetricFamily(
            "capserv_connections_refused", "TCP connections closed at once, by limit.", labels=["limit"]
        )
        for limit in REFUSAL_LIMITS:
            refused.add_metric([limit], tcp["connections_refused"].get(limit, 0))
        yield refused
        yield CounterMetricFamily(
            "capserv_idle_timeouts", "TCP connections closed for being idle.", value=tcp["idle_timeouts"]
        )
        yield CounterMetricFamily(
            "capserv_read_pauses",
            "Times reading from a TCP connection paused because its unsent reply passed --high-water.",
            value=tcp["pauses"],
        )
        yield CounterMetricFamily(
            "capserv_aborts", "TCP connections aborted for not taking their last bytes.", value=tcp["aborts"]
        )
        received = CounterMetricFamily("capserv_received_bytes", "Bytes received.", labels=["transport"])
        received.add_metric(["tcp"], tcp["bytes_in"])
        received.add_metric(["udp"], udp["bytes_in"])
        yield received
        sent = CounterMetricFamily("capserv_sent_bytes", "Bytes sent.", labels=["transport"])
        sent.add_metric(["tcp"], tcp["bytes_out"])
        sent.add_metric(["udp"], udp["bytes_out"])
        yield sent
        yield CounterMetricFamily("capserv_datagrams_received", "Datagrams received.", value=udp["datagrams_in"])
        yield CounterMetricFamily("capserv_datagrams_sent", "Reply datagrams sent.", value=udp["datagrams_out"])
        drops = CounterMetricFamily(
            "capserv_datagrams_dropped", "Datagrams not answered, by reason.", labels=["reason"]
        )
        for reason in DROP_REASONS:
            drops.add_metric([reason], udp["drops"].get(reason, 0))
        yield drops
        yield GaugeMetricFamily(
            "capserv_udp_rate_sources",
            "Source addresses the UDP rate limiter remembers now (bounded by --udp-rate-table-size).",
            value=udp["rate_table_size"],
        )
        yield GaugeMetricFamily("capserv_workers", "Worker processes serving the ports.", value=self.workers)


class _QuietSite(Site):
    """A Site that does not log every scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(
    factory: UppercaseFactory,
    datagram: DatagramState,
    workers: int = 1,
    children: Mapping[bytes, IResource] | None = None,
) -> Site:
    """
    A web site serving the metrics at ``/metrics``, from its own registry
    (so an embedding program's registry is not touched).

    :param children: more resources to serve beside ``/metrics``, by path
        segment (the daemon's ``/healthz`` and ``/readyz``,
        `capserv.health.health_children`).
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.twisted import MetricsResource

    registry = CollectorRegistry(auto_describe=True)
    registry.register(CapservCollector(factory, datagram, workers))
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))  # type: ignore[no-untyped-call]
    for path, child in (children or {}).items():
        root.putChild(path, child)
    return _QuietSite(root)  # type: ignore[no-untyped-call]
