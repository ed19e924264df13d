"""
What one capserv service's connections, or its datagram ports, share: TCP's
`UppercaseFactory` and UDP's `DatagramState` are both a `SharedState`.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IReactorTime

from capserv.protocols._twisted import global_reactor
from capserv.protocols.addresses import SourceNetworks
from capserv.protocols.config import CapservConfig, Clock
from capserv.protocols.logthrottle import LogThrottle

__all__ = ["SharedState"]


class SharedState:
    """
    The configuration, the clock, the source networks per-source limits
    count in, and the throttle of refusal and drop lines (one per 10 s).
    Every UDP port of a service shares one (as ``twisted.names`` shares one
    ``DNSServerFactory``), so limits and counters hold across listeners.
    """

    def __init__(self, config: CapservConfig | None = None, clock: Clock | None = None) -> None:
        """
        :param config: the behaviour; the daemon's defaults if `None`.
        :param clock: where time comes from; the global reactor, looked up
            only when time is first needed (so building this installs no
            reactor), if `None`.
        """
        self.config = config if config is not None else CapservConfig()
        self._clock = cast("IReactorTime | None", clock)
        self.networks = SourceNetworks(self.config.ipv4_prefix, self.config.ipv6_prefix)
        self.log_throttle = LogThrottle(10.0)

    @property
    def clock(self) -> IReactorTime:
        """The clock given, or else the global reactor."""
        if self._clock is None:
            self._clock = global_reactor()
        return self._clock

    def throttled(self) -> int | None:
        """`LogThrottle.check` now: `None` to log nothing, else how many lines were held back."""
        return self.log_throttle.check(self.clock.seconds())

    def snapshot(self) -> dict[str, Any]:
        """The counters as a dict of plain data."""
        raise NotImplementedError
