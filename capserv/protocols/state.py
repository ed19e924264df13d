"""
The shape of what one capserv service's connections, or its datagram
ports, share: TCP's `UppercaseFactory` and UDP's `DatagramState` are both
a `SharedState`.
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
    count in, and the throttle of refusal and drop log lines (one line per
    10 seconds at most).

    A Twisted datagram protocol serves one port, so a service listening on
    several UDP ports hands every port's protocol one `DatagramState` (as
    ``twisted.names`` hands one ``DNSServerFactory`` to every
    ``DNSDatagramProtocol``); a stream factory is already shared by its
    connections.  Either way limits and counters hold across listeners.
    """

    def __init__(self, config: CapservConfig | None = None, clock: Clock | None = None) -> None:
        """
        :param config: the behaviour; the daemon's defaults if `None`.
        :param clock: where time comes from (timeouts, durations, rate
            limits, log throttling); the global reactor if `None`, looked up
            only when time is first needed, so building this installs no
            reactor.
        """
        self.config = config if config is not None else CapservConfig()
        self._clock = cast("IReactorTime | None", clock)
        #: The network each source is counted in.
        self.networks = SourceNetworks(self.config.ipv4_prefix, self.config.ipv6_prefix)
        self.log_throttle = LogThrottle(10.0)

    @property
    def clock(self) -> IReactorTime:
        """The clock given, or else the global reactor."""
        if self._clock is None:
            self._clock = global_reactor()
        return self._clock

    def throttled(self) -> int | None:
        """
        `LogThrottle.check` now: `None` to log nothing, else how many lines
        were held back since the last.
        """
        return self.log_throttle.check(self.clock.seconds())

    def snapshot(self) -> dict[str, Any]:
        """
        The counters as a dict of plain data.
        """
        raise NotImplementedError
