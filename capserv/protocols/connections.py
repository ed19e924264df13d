"""The open connections of one stream factory: the set, the one idle sweep over them, and the drain."""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from capserv.protocols.state import SharedState

if TYPE_CHECKING:
    from capserv.protocols.tcp import UppercaseProtocol

__all__ = ["ConnectionSet"]


class ConnectionSet(Set["UppercaseProtocol"]):
    """
    The connections a factory serves (read-only to others), closed when idle
    by one sweep every tenth of the idle timeout (no timer per connection, none
    while none is open) and when a stop asks.
    """

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._open: set[UppercaseProtocol] = set()
        self._sweep_call: IDelayedCall | None = None
        self._drained: list[tuple[Deferred[None], IDelayedCall | None]] = []  # drain's waiters and timers
        self.sweep_interval = max(state.config.idle_timeout / 10, 0.05)

    def __contains__(self, protocol: object) -> bool:
        return protocol in self._open

    def __iter__(self) -> Iterator[UppercaseProtocol]:
        return iter(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, protocol: UppercaseProtocol) -> None:
        """Serve ``protocol``, starting the sweep if it is the first."""
        self._open.add(protocol)
        if self._sweep_call is None and self._state.config.idle_timeout > 0:
            self._sweep_call = self._state.clock.callLater(self.sweep_interval, self._sweep)

    def discard(self, protocol: UppercaseProtocol) -> bool:
        """Forget ``protocol`` (whether it was open); when none is left, stop the sweep and fire `drain`'s waiters."""
        if protocol not in self._open:
            return False
        self._open.discard(protocol)
        if not self._open:
            call, self._sweep_call = self._sweep_call, None
            if call is not None and call.active():
                call.cancel()
            waiting, self._drained = self._drained, []
            for d, timer in waiting:
                if timer is not None and timer.active():
                    timer.cancel()
                d.callback(None)
        return True

    def _sweep(self) -> None:
        """Close the connections idle for the idle timeout (to within a tenth of it)."""
        self._sweep_call = None
        clock = self._state.clock
        now = clock.seconds()
        for protocol in list(self._open):
            protocol._check_idle(now)
        if self._open:
            self._sweep_call = clock.callLater(self.sweep_interval, self._sweep)

    def abort_all(self) -> None:
        """Abort every connection now (a stop forced by a second signal)."""
        for protocol in list(self._open):
            protocol._abort_now()

    def abort_reset(self) -> int:
        """Abort the connections reset unnoticed (`UppercaseProtocol._check_reset`) as a stop begins; how many."""
        return sum(protocol._check_reset() for protocol in list(self._open))

    def drain(self, timeout: float) -> Deferred[None]:
        """Fire once every connection has closed, closing those still open after ``timeout`` s (0: now)."""
        self.abort_reset()
        if not self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        call = self._state.clock.callLater(timeout, self._shutdown) if timeout > 0 else None
        self._drained.append((d, call))
        if call is None:
            self._shutdown()
        return d

    def _shutdown(self) -> None:
        for protocol in list(self._open):
            protocol._shutdown()
