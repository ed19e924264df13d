"""
The counters the factories keep (plain integers updated in place, read by
whatever exports them) and the one list of reasons a connection is refused
or a datagram dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from enum import Enum

__all__ = ["DROPS", "PER_SOURCE", "REFUSALS", "Reason", "TCPStats", "UDPStats", "counts"]


class Reason(str, Enum):
    """
    Why a connection was refused or a datagram not answered.  A member is its
    value, the label of counters, log lines and metrics (equal, same hash,
    formats as it).
    """

    __hash__ = str.__hash__
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)

    SHUTDOWN = "shutdown"  # a graceful stop has begun
    MAX_CONNECTIONS = "max_connections"
    MAX_CONNECTIONS_PER_IP = "max_connections_per_ip"
    PROXY_HEADER = "proxy_header"  # behind HAProxy, no valid PROXY header
    RATE_LIMIT = "rate_limit"  # the source network is out of datagram tokens (udp_rate)
    BYTE_RATE = "byte_rate"  # ... out of reply-byte tokens (udp_byte_rate)
    OVERSIZE = "oversize"  # the reply would not fit in one datagram
    LOW_PORT = "low_port"  # source port below 1024 (udp_allow_low_ports off)
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
    Totals for every connection one `UppercaseFactory` has served; byte totals
    of open connections are added when they close (`UppercaseFactory.snapshot`
    includes them).
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
        self.connections_total = 0
        #: Connections closed unserved, by `Reason` (one of `REFUSALS`).
        self.connections_refused: Counter[Reason] = Counter()
        #: Refusals by a per-source limit, by `Reason` and family (``"ipv4"``, ``"ipv6"``).
        self.limited: defaultdict[Reason, Counter[str]] = defaultdict(Counter)
        self.idle_timeouts = 0
        #: Connections aborted because they would not take their last bytes.
        self.aborts = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Times reading was paused because a reply backed up.
        self.pauses = 0


class UDPStats:
    """Totals for the datagram ports sharing one `DatagramState`."""

    __slots__ = ("bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "drops", "limited")

    def __init__(self) -> None:
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Datagrams not answered, by `Reason` (one of `DROPS`).
        self.drops: Counter[Reason] = Counter()
        #: Drops by a per-source budget, by `Reason` and family (``"ipv4"``, ``"ipv6"``).
        self.limited: defaultdict[Reason, Counter[str]] = defaultdict(Counter)


def counts(counter: Counter[Reason]) -> dict[str, int]:
    """A counter of reasons with plain text keys, for snapshots."""
    return {str(reason): n for reason, n in counter.items()}
