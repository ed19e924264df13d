"""
``/metrics`` for ``--metrics``: a collector reads capserv's counters (every process's) at each
scrape, nothing updated per packet; prometheus-client is the extra ``capserv[metrics]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from capserv.protocols.config import CapservConfig
from capserv.protocols.stats import DROPS, PER_SOURCE, REFUSALS, Reason

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["CapservCollector", "MetricsResource", "metrics_site"]


class CapservCollector:
    """``figures()``: ``{"tcp": ..., "udp": ..., "workers": N}`` (`process_figures`, summed) as metrics."""

    def __init__(self, figures: Callable[[], Mapping[str, Any]], config: CapservConfig) -> None:
        self.figures, self.config = figures, config

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        figures = self.figures()
        tcp, udp = figures["tcp"], figures["udp"]
        for name, help, where, key in _PLAIN:
            family = GaugeMetricFamily if name in _GAUGES else CounterMetricFamily
            yield family(name, help, value=(figures if where == "all" else figures[where])[key])
        transports = CounterMetricFamily("capserv_received_bytes", "Bytes received.", labels=["transport"])
        sent = CounterMetricFamily("capserv_sent_bytes", "Bytes sent.", labels=["transport"])
        for transport in ("tcp", "udp"):
            transports.add_metric([transport], figures[transport]["bytes_in"])
            sent.add_metric([transport], figures[transport]["bytes_out"])
        yield transports
        yield sent
        refused = CounterMetricFamily(
            "capserv_connections_refused",
            "TCP connections closed at once, by limit (proxy_header: no valid PROXY header).",
            labels=["limit"],
        )
        for limit in REFUSALS:
            refused.add_metric([limit.value], tcp["connections_refused"].get(limit.value, 0))
        yield refused
        drops = CounterMetricFamily(
            "capserv_datagrams_dropped", "Datagrams not answered, by reason.", labels=["reason"]
        )
        for reason in DROPS:
            drops.add_metric([reason.value], udp["drops"].get(reason.value, 0))
        yield drops
        limited = CounterMetricFamily(
            "capserv_network_limited",
            "Connections refused and datagrams dropped by a per-source limit, by the limit and the "
            "source network's family and prefix length (--ipv4-prefix, --ipv6-prefix).",
            labels=["limit", "family", "prefix"],
        )
        for limit in PER_SOURCE:
            counts = (tcp if limit is Reason.MAX_CONNECTIONS_PER_IP else udp)["limited"].get(limit.value, {})
            for net, prefix in (("ipv4", self.config.ipv4_prefix), ("ipv6", self.config.ipv6_prefix)):
                limited.add_metric([limit.value, net, f"/{prefix}"], counts.get(net, 0))
        yield limited


_PAUSES = "Times reading from a TCP connection paused because its unsent reply passed --high-water."
_SOURCES = "Source networks the UDP rate limiter remembers now (bounded by --udp-rate-table-size)."
_PLAIN = (
    ("capserv_connections_active", "TCP connections open now.", "tcp", "connections_active"),
    ("capserv_connections", "TCP connections accepted and served.", "tcp", "connections_total"),
    ("capserv_idle_timeouts", "TCP connections closed for being idle.", "tcp", "idle_timeouts"),
    ("capserv_read_pauses", _PAUSES, "tcp", "pauses"),
    ("capserv_aborts", "TCP connections aborted for not taking their last bytes.", "tcp", "aborts"),
    ("capserv_datagrams_received", "Datagrams received.", "udp", "datagrams_in"),
    ("capserv_datagrams_sent", "Reply datagrams sent.", "udp", "datagrams_out"),
    ("capserv_udp_rate_sources", _SOURCES, "udp", "rate_table_size"),
    ("capserv_workers", "Worker processes serving the ports.", "all", "workers"),
)
_GAUGES = {"capserv_connections_active", "capserv_udp_rate_sources", "capserv_workers"}


class _QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:  # not a line per scrape
        pass


class MetricsResource(Resource):
    """``/metrics`` (OpenMetrics if asked), in the reactor's thread: its own thread per scrape hung stops."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        output: bytes = encoder(self.registry)
        return output


def metrics_site(
    figures: Callable[[], Mapping[str, Any]],
    config: CapservConfig,
    children: Mapping[bytes, IResource] | None = None,
) -> Site:
    """A `CapservCollector` at ``/metrics`` from a registry of its own (not the process's), ``children`` beside it."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    registry.register(CapservCollector(figures, config))
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    for path, child in (children or {}).items():
        root.putChild(path, child)
    return _QuietSite(root)  # type: ignore[no-untyped-call]
