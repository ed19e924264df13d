"""
Which connections a stream factory serves: none once a stop has begun, at most
``max_connections`` at once and ``max_connections_per_ip`` from one source
network; refusals are counted by `Reason` and logged at most once per 10 s.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from capserv.protocols.addresses import describe, family
from capserv.protocols.logthrottle import literal
from capserv.protocols.state import SharedState
from capserv.protocols.stats import Reason, TCPStats

__all__ = ["Admission"]

_log = Logger(namespace="capserv.tcp.UppercaseFactory")


class Admission:
    """The connection limits of one factory, and the per-network counts of the per-IP limit."""

    def __init__(self, state: SharedState, stats: TCPStats) -> None:
        self._state = state
        self._stats = stats
        self.accepting = True  # a graceful stop clears it
        self.held: dict[bytes, int] = {}

    def refusal(self, open_now: int) -> Reason | None:
        """Why a new connection may not be served with ``open_now`` open (limits needing no address), or `None`."""
        if not self.accepting:
            return Reason.SHUTDOWN
        most = self._state.config.max_connections
        if most and open_now >= most:
            return Reason.MAX_CONNECTIONS
        return None

    def take(self, address: IAddress | None) -> bytes | None:
        """Count a connection against its network's per-IP limit: the key to `release`, or `None` if refused."""
        key = self._state.networks.key(address)
        if key is None:
            return b""
        count = self.held.get(key, 0)
        limit = self._state.config.max_connections_per_ip
        if limit and count >= limit:
            self.refuse(address, Reason.MAX_CONNECTIONS_PER_IP, key, count)
            return None
        self.held[key] = count + 1
        return key

    def release(self, key: bytes) -> None:
        """Give back a count `take` returned (the empty one is none)."""
        left = self.held.get(key, 1) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)

    def count(self, address: IAddress | str) -> int:
        """How many connections are open from the source network of ``address`` (text or a Twisted address)."""
        key = self._state.networks.key((address, 0) if isinstance(address, str) else address)
        return self.held.get(key, 0) if key is not None else 0

    def refuse(
        self,
        address: IAddress | None,
        reason: Reason,
        network: bytes | None = None,
        count: int = 0,
        what: str | None = None,
    ) -> None:
        """Count a refusal and log it (throttled); ``what``: what was wrong, if not a limit reached."""
        self._stats.connections_refused[reason] += 1
        if network is not None:
            self._stats.limited[reason][family(network)] += 1
        held = self._state.throttled()
        if held is None:
            return
        if what is not None:
            _log.warn(
                "Refused connection from {peer}: {what} ({held} more refused since the last report)",
                peer=describe(address),
                limit=reason.value,
                what=what,
                held=held,
            )
            return
        peer, detail, text = describe(address), "", ""
        if network is not None:
            text = self._state.networks.text(network)
            field = f"{reason.field}={self._state.config.max_connections_per_ip}"
            detail = f" ({text} has {count} connection{'' if count == 1 else 's'} open; {field})"
        _log.warn(
            literal(f"Refused connection from {peer}: {reason.value} reached{detail} ")
            + "({held} more refused since the last report)",
            peer=peer,
            limit=reason.value,
            network=text or None,
            open=count if network is not None else None,
            held=held,
        )
