"""
Counters that the factories keep, for logs now and metrics later.

They are plain integers updated in place: cheap enough to keep on every
connection and datagram, and read by whatever exports them.
"""

from __future__ import annotations

from collections import Counter, defaultdict

__all__ = ["TCPStats", "UDPStats"]


class TCPStats:
    """
    Totals for every connection one `UppercaseFactory` has served.

    Byte totals of open connections are added when they close; call
    `UppercaseFactory.snapshot` for figures that include them.
    """

    __slots__ = (
        "aborts",
        "bytes_in",
        "bytes_out",
        "connections_refused",
        "connections_total",
        "idle_timeouts",
        "limited",
        "pauses",
    )

    def __init__(self) -> None:
        #: Connections accepted and served.
        self.connections_total = 0
        #: Connections closed at once, by the limit that refused them
        #: (``"max_connections"``, ``"max_connections_per_ip"``, ``"shutdown"``).
        self.connections_refused: Counter[str] = Counter()
        #: Connections refused by the per-source limit, by the limit and the
        #: source network's family (``"ipv4"``, ``"ipv6"``).
        self.limited: defaultdict[str, Counter[str]] = defaultdict(Counter)
        #: Connections closed for being idle.
        self.idle_timeouts = 0
        #: Connections aborted because they would not take their last bytes.
        self.aborts = 0
        #: Bytes read from closed connections.
        self.bytes_in = 0
        #: Bytes written to closed connections.
        self.bytes_out = 0
        #: Times reading was paused because a reply backed up.
        self.pauses = 0


class UDPStats:
    """
    Totals for one `UppercaseDatagramProtocol`.
    """

    __slots__ = ("bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "drops", "limited")

    def __init__(self) -> None:
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Datagrams not answered, by reason: ``"rate_limit"``,
        #: ``"byte_rate"``, ``"oversize"``, ``"low_port"``, ``"send_error"``.
        self.drops: Counter[str] = Counter()
        #: Datagrams dropped by a per-source budget (``"rate_limit"``,
        #: ``"byte_rate"``), by the source network's family (``"ipv4"``,
        #: ``"ipv6"``).
        self.limited: defaultdict[str, Counter[str]] = defaultdict(Counter)
