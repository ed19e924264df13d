"""What a service's connections or datagram ports share (`UppercaseFactory`, `DatagramState`)."""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IReactorTime

from capserv.protocols._twisted import global_reactor
from capserv.protocols.addresses import SourceNetworks
from capserv.protocols.config import CapservConfig, Clock
from capserv.protocols.logthrottle import LogThrottle

__all__ = ["SharedState"]


class SharedState:
    """
    The configuration, the clock, the source networks per-source limits count
    in, and the throttle of refusal and drop lines: shared by every listener
    of a service, so limits and counters hold across them.

    :param config: the behaviour; the daemon's defaults if `None`.
    :param clock: the global reactor if `None`, looked up only when first needed.
    """

    def __init__(self, config: CapservConfig | None = None, clock: Clock | None = None) -> None:
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
