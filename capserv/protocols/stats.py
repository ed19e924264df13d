"""The factories' counters (plain integers, updated in place) and why a connection or datagram is refused."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["DROPS", "PER_SOURCE", "REFUSALS", "Reason", "TCPStats", "UDPStats", "counts"]


class Reason(str, Enum):
    """Why a connection was refused or a datagram dropped; a member is its value (equal, same hash, same text)."""

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

REFUSALS = (Reason.MAX_CONNECTIONS, Reason.MAX_CONNECTIONS_PER_IP, Reason.SHUTDOWN, Reason.PROXY_HEADER)
DROPS = (Reason.RATE_LIMIT, Reason.BYTE_RATE, Reason.OVERSIZE, Reason.LOW_PORT, Reason.SEND_ERROR)
# The per-source limits, each also counted by the source network's family.
PER_SOURCE = (Reason.MAX_CONNECTIONS_PER_IP, Reason.RATE_LIMIT, Reason.BYTE_RATE)


@dataclass(slots=True, eq=False)
class TCPStats:
    """Totals of one `UppercaseFactory`'s connections; open ones' bytes are added when they close."""

    connections_total: int = 0
    connections_refused: Counter[Reason] = field(default_factory=Counter)  # by one of REFUSALS
    limited: defaultdict[Reason, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # by family
    idle_timeouts: int = 0
    aborts: int = 0  # connections that would not take their last bytes
    bytes_in: int = 0
    bytes_out: int = 0
    pauses: int = 0  # times reading paused because a reply backed up


class UDPStats:
    """Totals for the datagram ports sharing one `DatagramState`."""

    __slots__ = ("bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "drops", "limited")

    def __init__(self) -> None:
        self.datagrams_in = self.datagrams_out = self.bytes_in = self.bytes_out = 0
        self.drops: Counter[Reason] = Counter()  # by one of DROPS
        self.limited: defaultdict[Reason, Counter[str]] = defaultdict(Counter)


def counts(counter: Counter[Reason]) -> dict[str, int]:
    """A counter of reasons with plain text keys, for snapshots."""
    return {str(reason): n for reason, n in counter.items()}
