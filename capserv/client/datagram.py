"""
UDP requests with a timeout and retries, each from its own port (a late reply is never taken for a later
request's); replies from other addresses are ignored, and a reply over 65,535 bytes fails instead of arriving cut.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from twisted.internet import threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.protocol import DatagramProtocol

from capserv.client.stream import CapservClientError, ClientReactor, check_seconds
from capserv.protocols.udp import MAX_DATAGRAM, MAX_REPLY_IPV4, MAX_REPLY_IPV6

#: The longest UDP reply the client reads whole.
MAX_UDP_REPLY = MAX_DATAGRAM


class NoReplyError(CapservClientError):
    """A UDP request got no reply after every try."""

    def __init__(self, address: tuple[str, int], tries: int, timeout: float) -> None:
        #: What happened, without the address (for a caller that names it).
        self.reason = f"no reply after {tries} {'try' if tries == 1 else 'tries'} ({timeout:g}s each)"
        super().__init__(f"{show_address(address)}: {self.reason}")
        self.address = address
        self.tries = tries
        self.timeout = timeout


class ReplyTooLongError(CapservClientError):
    """A UDP reply was longer than `MAX_UDP_REPLY` bytes and could not be read whole."""


class MessageTooLongError(CapservClientError, ValueError):
    """A UDP message is longer than one datagram carries to its address (65,507 bytes over IPv4, 65,527 over IPv6)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message too long for one datagram ({size} bytes; at most {limit} bytes to this address)")
        self.size = size
        self.limit = limit


def max_udp_message(host: str) -> int:
    """The longest message one datagram carries to ``host``, an IP address."""
    return MAX_REPLY_IPV6 if ":" in host and not host.startswith("::ffff:") else MAX_REPLY_IPV4


def show_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _normal(address: tuple[Any, ...]) -> tuple[str, int]:
    """The address with an IPv4-mapped IPv6 host written as IPv4."""
    host = address[0]
    return (host[7:] if host.startswith("::ffff:") and "." in host else host), address[1]


class _UDPRequest(DatagramProtocol):
    """One UDP request from its own port: send, wait, retry, give up."""

    noisy = False

    def __init__(self, clock: IReactorTime, address: tuple[str, int], data: bytes, timeout: float, tries: int) -> None:
        self.clock = clock
        self.address = address
        self.data = data
        self.timeout = timeout
        self.tries = tries
        self.sent = 0
        #: Cancelling it stops the retries (udp_request then closes the port).
        self.result: Deferred[bytes] = Deferred(lambda _: self._stopTimer())
        self._timer: IDelayedCall | None = None

    def startProtocol(self) -> None:
        self._send()

    def _send(self) -> None:
        self.sent += 1
        try:
            self.transport.write(self.data, self.address)  # type: ignore[union-attr]
        except OSError as e:
            self._done(e)
            return
        self._timer = self.clock.callLater(self.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        if self.sent < self.tries:
            self._send()
        else:
            self._done(NoReplyError(self.address, self.sent, self.timeout))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if _normal(addr) != _normal(self.address):
            return
        if len(data) > MAX_UDP_REPLY:
            self._done(ReplyTooLongError(f"the reply from {show_address(addr)} was longer than {MAX_UDP_REPLY} bytes"))
        else:
            self._done(data)

    def _done(self, outcome: bytes | Exception) -> None:
        if self.result.called:
            return
        self._stopTimer()
        if isinstance(outcome, bytes):
            self.result.callback(outcome)
        else:
            self.result.errback(outcome)

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def resolve_udp(reactor: ClientReactor, host: str, port: int) -> Deferred[tuple[str, int]]:
    """Resolve a host name (or IP literal) for UDP, IPv4 or IPv6."""
    if isIPAddress(host) or isIPv6Address(host):
        return succeed((host, port))
    pool, lookup = reactor.getThreadPool(), socket.getaddrinfo
    found = threads.deferToThreadPool(
        cast(IReactorFromThreads, reactor), pool, lookup, host, port, type=socket.SOCK_DGRAM
    )
    return found.addCallback(lambda infos: (str(infos[0][4][0]), port))


def udp_request(
    reactor: ClientReactor, host: str, port: int, data: bytes, timeout: float = 1.0, retries: int = 3
) -> Deferred[bytes]:
    """
    Send one datagram to ``host`` (a name or IP address) and fire with the reply, trying again after ``timeout``
    seconds up to ``retries`` more times; cancelling stops the retries and closes the port.  Fails with
    `NoReplyError` after the last try, `MessageTooLongError` if ``data`` does not fit, or `ReplyTooLongError`.
    """
    check_seconds("timeout", timeout, optional=False)
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0 (tries after the first), not {retries!r}")

    def send(address: tuple[str, int]) -> Deferred[bytes]:
        limit = max_udp_message(address[0])
        if len(data) > limit:
            return fail(MessageTooLongError(len(data), limit))
        request = _UDPRequest(cast(IReactorTime, reactor), address, data, timeout, retries + 1)
        interface = "::" if ":" in address[0] else "0.0.0.0"
        listening = reactor.listenUDP(0, request, interface=interface, maxPacketSize=MAX_UDP_REPLY + 1)
        return request.result.addBoth(
            lambda result: maybeDeferred(listening.stopListening).addCallback(lambda _: result)
        )

    return resolve_udp(reactor, host, port).addCallback(send)
