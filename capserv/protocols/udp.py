"""
The uppercase service over datagrams, one reply per datagram, kept from
abuse: per-source-network budgets of datagrams and reply bytes (reflection),
no answers to low source ports (loops between servers), replies sized.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from capserv.protocols._twisted import datagram_sender
from capserv.protocols.addresses import describe, family, host_key, is_loopback
from capserv.protocols.config import CapservConfig, Clock
from capserv.protocols.logthrottle import literal
from capserv.protocols.ratelimit import TokenBuckets
from capserv.protocols.state import SharedState
from capserv.protocols.stats import Reason, UDPStats, counts
from capserv.protocols.text import is_ascii_compatible, uppercase

__all__ = ["MAX_DATAGRAM", "MAX_REPLY_IPV4", "MAX_REPLY_IPV6", "DatagramState", "UppercaseDatagramProtocol"]

#: The largest datagram read whole (Twisted's default of 8,192 truncates).
MAX_DATAGRAM = 65535
#: The largest UDP payload over IPv4: 65,535 - 20 (IP header) - 8 (UDP).
MAX_REPLY_IPV4 = 65507
#: The largest UDP payload over IPv6 without jumbograms: 65,535 - 8.
MAX_REPLY_IPV6 = 65527

#: How many source hosts `DatagramState.source` remembers the network of.
_SOURCES_REMEMBERED = 4096


class DatagramState(SharedState):
    """What every datagram port of one capserv shares (`SharedState`), with UDP counters and per-source budgets."""

    def __init__(self, config: CapservConfig | None = None, clock: Clock | None = None) -> None:
        """:param clock: time for the budgets and log throttling; the global reactor, when first needed, if `None`."""
        super().__init__(config, clock)
        self.stats = UDPStats()
        c = self.config
        self.buckets: TokenBuckets | None = None
        if c.udp_rate > 0 or c.udp_byte_rate > 0:
            self.buckets = TokenBuckets(
                c.udp_rate, c.udp_burst, c.udp_rate_table_size, c.udp_byte_rate, c.udp_byte_burst
            )
        # Most traffic comes from hosts seen a moment ago; emptied when full, so a many-source flood keeps it small.
        self._sources: dict[str, bytes] = {}

    def source(self, host: str) -> bytes:
        """
        The network whose budgets a datagram from ``host`` (the transport's)
        spends, or ``b""`` for none (loopback unless ``udp_rate_loopback``).
        """
        sources = self._sources
        network = sources.get(host)
        if network is None:
            key = host_key((host, 0))
            if key is None or (not self.config.udp_rate_loopback and is_loopback(key)):
                network = b""
            else:
                network = self.networks.network(key)
            if len(sources) >= _SOURCES_REMEMBERED:
                sources.clear()
            sources[host] = network
        return network

    def protocol(self) -> UppercaseDatagramProtocol:
        """A new protocol for one more port, sharing this state."""
        return UppercaseDatagramProtocol(state=self)

    def snapshot(self) -> dict[str, Any]:
        """The counters as a dict."""
        stats = self.stats
        return {
            "datagrams_in": stats.datagrams_in,
            "datagrams_out": stats.datagrams_out,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "drops": counts(stats.drops),
            "limited": {str(reason): dict(by_family) for reason, by_family in stats.limited.items()},
            "rate_table_size": len(self.buckets) if self.buckets is not None else 0,
        }


#: UppercaseDatagramProtocol's logger, under the namespace operators filter on.
_log = Logger(namespace="capserv.udp.UppercaseDatagramProtocol")


class UppercaseDatagramProtocol(DatagramProtocol):
    """
    Answer each datagram with its uppercase text, sent to its source:
    ``reactor.listenUDP(50007, UppercaseDatagramProtocol())`` (`startProtocol`
    raises the port's ``maxPacketSize`` to `MAX_DATAGRAM`).  Several ports
    share limits and counters through one `DatagramState` (`DatagramState.protocol`).
    """

    #: The listener logs the address; Twisted's start/stop lines add nothing.
    noisy = False

    def __init__(
        self,
        config: CapservConfig | None = None,
        clock: Clock | None = None,
        state: DatagramState | None = None,
    ) -> None:
        """:param state: shared with other ports' protocols; if given, ``config`` and ``clock`` come from it."""
        if state is None:
            state = DatagramState(config, clock)
        self.state = state
        self.config = state.config
        self.stats = state.stats
        self.buckets = state.buckets
        self._source = state.source
        self._ascii = self.config.ascii_only
        self._fast = is_ascii_compatible(self.config.encoding)
        self._send: Any = None

    @property
    def clock(self) -> IReactorTime:
        """The shared state's clock."""
        return self.state.clock

    def startProtocol(self) -> None:
        transport = self.transport
        self._send = datagram_sender(transport, self.config.fast_paths)
        if getattr(transport, "maxPacketSize", MAX_DATAGRAM) < MAX_DATAGRAM:
            transport.maxPacketSize = MAX_DATAGRAM  # type: ignore[union-attr]

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        stats.datagrams_in += 1
        size = len(data)
        stats.bytes_in += size
        config = self.config
        if addr[1] < 1024 and not config.udp_allow_low_ports:
            self._drop(Reason.LOW_PORT, addr, size, "source port below 1024; udp_allow_low_ports answers it")
            return
        host = addr[0]
        buckets = self.buckets
        network = b""
        if buckets is not None:
            network = self._source(host)
            if network:
                # Charged the request's size before uppercasing (a flood costs none), the difference below.
                refused = buckets.spend(network, self.state.clock.seconds(), size)
                if refused is not None:
                    self._drop(refused, addr, size, network=network)
                    return
        if self._ascii or (self._fast and data.isascii()):
            reply = data.upper()
        else:
            reply = uppercase(data, config.encoding)
        if len(reply) > MAX_REPLY_IPV4 and (
            len(reply) > MAX_REPLY_IPV6 or ":" not in host or host.startswith("::ffff:")
        ):
            self._drop(Reason.OVERSIZE, addr, len(reply))
            return
        if network and len(reply) != size and buckets is not None and not buckets.adjust(network, len(reply) - size):
            # Uppercasing grew the text past what the source has left.
            self._drop(Reason.BYTE_RATE, addr, len(reply), network=network)
            return
        try:
            self._send(reply, addr)
        except (OSError, MessageLengthError) as e:
            self._drop(Reason.SEND_ERROR, addr, len(reply), str(e))
            return
        stats.datagrams_out += 1
        stats.bytes_out += len(reply)

    def send_error(self, error: Exception) -> None:
        """A queued reply failed to go out (how the event loop's transports report it): counted as any failed send."""
        self._drop(Reason.SEND_ERROR, ("?", 0), 0, str(error))

    def _drop(self, reason: Reason, addr: Any, size: int, detail: str = "", network: bytes | None = None) -> None:
        stats = self.stats
        stats.drops[reason] += 1
        if network is not None:
            stats.limited[reason][family(network)] += 1
        held = self.state.throttled()
        if held is None:
            return
        text = None if network is None else self.state.networks.text(network)
        if text is not None:
            detail = f"{text} over {reason.field}"
        peer = describe(addr)
        drops = counts(stats.drops)
        totals = ", ".join(f"{name} {count}" for name, count in sorted(drops.items()))
        said = f": {detail}" if detail else ""
        _log.warn(
            literal(f"Dropped a datagram for {peer} ({reason.value}, {size} bytes{said}); ")
            + "{held} more drops since the last report; "
            + literal(f"totals: {totals}"),
            peer=peer,
            reason=reason.value,
            size=size,
            network=text,
            held=held,
            drops=drops,
        )

    def snapshot(self) -> dict[str, Any]:
        """The shared state's counters as a dict."""
        return self.state.snapshot()
