"""
The open connections of one stream factory: the set, the one idle sweep
over them, and the graceful drain.
"""

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
    The connections a factory serves now (a read-only set to everyone
    else), closed when idle and closed in order when a stop asks.

    One sweep closes every idle connection, every tenth of the idle
    timeout: no timer per connection to create, reschedule or cancel, and
    none at all while no connection is open.
    """

    def __init__(self, state: SharedState) -> None:
        """
        :param state: the configuration and clock.
        """
        self._state = state
        self._open: set[UppercaseProtocol] = set()
        self._sweep_call: IDelayedCall | None = None
        self._drained: list[Deferred[None]] = []
        #: Seconds between two sweeps.
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
        """
        Forget ``protocol``; when none is left, stop the sweep and fire
        `drain`'s waiters.

        :return: whether it was open.
        """
        if protocol not in self._open:
            return False
        self._open.discard(protocol)
        if not self._open:
            call, self._sweep_call = self._sweep_call, None
            if call is not None and call.active():
                call.cancel()
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)
        return True

    def _sweep(self) -> None:
        """
        Close connections idle for the idle timeout: each is closed between
        the timeout and the timeout plus a tenth of it after its last
        traffic.
        """
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
        """
        Abort every connection its peer has reset unnoticed
        (`UppercaseProtocol._check_reset`), as a stop begins.

        :return: how many.
        """
        return sum(protocol._check_reset() for protocol in list(self._open))

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Wait for the open connections to finish, closing those still open
        after ``timeout`` seconds (0: at once): what is buffered is sent, and
        those that will not take it are aborted after the configured grace.

        :return: a `Deferred` that fires once every connection has closed.
        """
        self.abort_reset()
        if not self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)

        def close_the_rest() -> None:
            for protocol in list(self._open):
                protocol._shutdown()

        if timeout > 0:
            call = self._state.clock.callLater(timeout, close_the_rest)

            def cancel_timer(result: None) -> None:
                if call.active():
                    call.cancel()
                return result

            d.addCallback(cancel_timer)
        else:
            close_the_rest()
        return d
