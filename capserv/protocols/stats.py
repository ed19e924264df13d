"""
Counters that the factories keep, for logs now and metrics later, and the
one list of reasons a connection is refused or a datagram dropped.

They are plain integers updated in place: cheap enough to keep on every
connection and datagram, and read by whatever exports them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from enum import Enum

__all__ = ["DROPS", "PER_SOURCE", "REFUSALS", "Reason", "TCPStats", "UDPStats", "counts"]


class Reason(str, Enum):
    """
    Why a connection was refused (closed unserved) or a datagram not answered.  The value is
    the label counters, log lines and metrics use; a member is that text
    (equal, same hash, formats as it), so a counter can be read with it too.
    """

    __hash__ = str.__hash__
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)

    #: A graceful stop has begun.
    SHUTDOWN = "shutdown"
    #: ``max_connections`` connections are open.
    MAX_CONNECTIONS = "max_connections"
    #: The source network has ``max_connections_per_ip`` connections open.
    MAX_CONNECTIONS_PER_IP = "max_connections_per_ip"
    #: Behind HAProxy (``haproxy:``), the connection brought no valid PROXY header.
    PROXY_HEADER = "proxy_header"
    #: The source network is out of datagram tokens (``udp_rate``).
    RATE_LIMIT = "rate_limit"
    #: The source network is out of reply-byte tokens (``udp_byte_rate``).
    BYTE_RATE = "byte_rate"
    #: The reply would not fit in one datagram.
    OVERSIZE = "oversize"
    #: The source port is below 1024 (``udp_allow_low_ports`` is off).
    LOW_PORT = "low_port"
    #: Sending the reply failed.
    SEND_ERROR = "send_error"

    @property
    def field(self) -> str:
        """The `CapservConfig` field that sets the limit, named in log lines."""
        return _FIELDS.get(self, self.value)


_FIELDS = {Reason.RATE_LIMIT: "udp_rate", Reason.BYTE_RATE: "udp_byte_rate", Reason.LOW_PORT: "udp_allow_low_ports"}

#: Why TCP connections are refused.
REFUSALS = (Reason.MAX_CONNECTIONS, Reason.MAX_CONNECTIONS_PER_IP, Reason.SHUTDOWN, Reason.PROXY_HEADER)
#: Why datagrams are dropped.
DROPS = (Reason.RATE_LIMIT, Reason.BYTE_RATE, Reason.OVERSIZE, Reason.LOW_PORT, Reason.SEND_ERROR)
#: The per-source limits, each also counted by the source network's family.
PER_SOURCE = (Reason.MAX_CONNECTIONS_PER_IP, Reason.RATE_LIMIT, Reason.BYTE_RATE)


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
        #: Connections closed at once, by the `Reason` (one of `REFUSALS`).
        self.connections_refused: Counter[Reason] = Counter()
        #: Connections refused by the per-source limit, by the `Reason` and
        #: the source network's family (``"ipv4"``, ``"ipv6"``).
        self.limited: defaultdict[Reason, Counter[str]] = defaultdict(Counter)
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
    Totals for the datagram ports sharing one `DatagramState`.
    """

    __slots__ = ("bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "drops", "limited")

    def __init__(self) -> None:
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Datagrams not answered, by the `Reason` (one of `DROPS`).
        self.drops: Counter[Reason] = Counter()
        #: Datagrams dropped by a per-source budget, by the `Reason` and the
        #: source network's family (``"ipv4"``, ``"ipv6"``).
        self.limited: defaultdict[Reason, Counter[str]] = defaultdict(Counter)


def counts(counter: Counter[Reason]) -> dict[str, int]:
    """A counter of reasons with plain text keys, for snapshots."""
    return {str(reason): n for reason, n in counter.items()}
