"""
Client API for Twisted programs: one TCP request, a streaming TCP session,
and UDP requests with a timeout and retries.  Every call returns a
`Deferred` and works on any reactor.

How a client knows a reply is complete
    Over TCP and UNIX sockets the client half-closes when it has sent
    everything; capserv then sends what it owes and closes, so the reply is
    complete when the connection ends.  TLS has no half-close in Twisted
    (``close_notify`` ends the whole session), so over TLS the client
    computes how long capserv's reply must be with capserv's own codec
    (UTF-8 rules, or ASCII rules with ``ascii_only``) and closes when that
    much has arrived, or after ``idle_timeout`` seconds without data if the
    server uppercases differently.

How UDP replies are matched
    Each request gets its own local port, and every try of that request is
    sent from it.  A reply that arrives late, after its request was answered
    or given up, reaches a closed port and can never be taken for the answer
    to a later request.  Replies from any address other than the server's
    are ignored.

How big a UDP reply may be
    Replies are read whole up to 65,535 bytes, the most a UDP datagram can
    carry (65,507 bytes of payload over IPv4, 65,527 over IPv6).  The
    client's port reads one byte more than that, so a longer datagram (an
    IPv6 jumbogram) fails the request with `ReplyTooLongError` instead of
    arriving cut short.  A message too long for one datagram fails with
    `MessageTooLongError` before anything is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure

from capserv.protocols.text import Uppercaser
from capserv.protocols.udp import MAX_DATAGRAM, MAX_REPLY_IPV4, MAX_REPLY_IPV6

__all__ = [
    "MAX_UDP_REPLY",
    "MessageTooLongError",
    "NoReplyError",
    "ReplyTooLongError",
    "ServerClosedError",
    "StreamSession",
    "open_stream",
    "resolve_udp",
    "tcp_request",
    "udp_request",
]


class NoReplyError(Exception):
    """
    A UDP request got no reply after every try.
    """

    def __init__(self, address: tuple[str, int], tries: int, timeout: float) -> None:
        super().__init__(
            f"no reply from {_show(address)} after {tries} {'try' if tries == 1 else 'tries'} ({timeout:g}s each)"
        )
        self.address = address
        self.tries = tries


#: The longest UDP reply the client reads whole.
MAX_UDP_REPLY = MAX_DATAGRAM


class ReplyTooLongError(Exception):
    """
    A UDP reply was longer than `MAX_UDP_REPLY` bytes and could not be read
    whole.
    """


class MessageTooLongError(ValueError):
    """
    A UDP message is longer than one datagram can carry to its address
    (65,507 bytes over IPv4, 65,527 over IPv6).
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message too long for one datagram ({size} bytes; at most {limit} bytes to this address)")
        self.size = size
        self.limit = limit


def max_udp_message(host: str) -> int:
    """
    The longest message one datagram carries to ``host``, an IP address:
    65,507 bytes over IPv4, 65,527 over IPv6.
    """
    return MAX_REPLY_IPV6 if ":" in host and not host.startswith("::ffff:") else MAX_REPLY_IPV4


def _show(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServerClosedError(Exception):
    """
    The server ended a TCP session before it was complete.
    """


class StreamSession(Protocol):
    """
    A streaming TCP session with capserv: `write` bytes, receive the
    uppercase bytes through ``on_data`` as they arrive, `finish` to say the
    input is over, and wait for `done`.

    Flow control is the transport's: register a producer with
    ``session.transport.registerProducer`` to be paused when the socket is
    full, and pause ``session.transport`` to stop reading replies.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        clock: IReactorTime | None = None,
        idle_timeout: float = 5.0,
        ascii_only: bool = False,
    ) -> None:
        """
        :param on_data: called with each piece of the reply.
        :param clock: for the idle timeout over TLS; the global reactor if
            `None`.
        :param idle_timeout: over a transport without half-close (TLS),
            seconds without data after `finish` before giving up on more.
        :param ascii_only: the server runs with ``--ascii``.
        """
        self.on_data = on_data
        self._clock = clock
        self._idleTimeout = idle_timeout
        #: Fires with `None` once the server has closed the connection
        #: (after sending everything), or fails with why it was lost.
        self.done: Deferred[None] = Deferred()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._predictor = Uppercaser(ascii_only=ascii_only)
        self._expected = 0
        self._finished = False
        self._idleCall: IDelayedCall | None = None
        self._closedByUs = False
        #: Whether the transport can shut down only its sending side (TLS
        #: cannot); known once connected.
        self.half_closes = False

    def connectionMade(self) -> None:
        transport = self.transport
        self.half_closes = hasattr(transport, "loseWriteConnection") and not _is_tls(transport)

    def write(self, data: bytes) -> None:
        """
        Send bytes to be uppercased.
        """
        self.bytes_sent += len(data)
        if not self.half_closes:
            self._expected += len(self._predictor.feed(data))
        self.transport.write(data)  # type: ignore[union-attr]

    def finish(self) -> None:
        """
        Say the input is over: half-close, so the server sends what it owes
        and closes.
        """
        if self._finished:
            return
        self._finished = True
        if self.half_closes:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]
        else:
            self._expected += len(self._predictor.flush())
            self._checkComplete()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.on_data(data)
        if self._finished and not self.half_closes:
            self._checkComplete()

    def _checkComplete(self) -> None:
        if self.bytes_received >= self._expected:
            self._closeFromHere()
            return
        clock = self._clock
        if clock is None:
            from capserv.protocols._twisted import global_reactor

            clock = self._clock = global_reactor()
        assert clock is not None
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self._idleTimeout)
        else:
            self._idleCall = clock.callLater(self._idleTimeout, self._closeFromHere)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        clean = reason.check(ConnectionDone) is not None or self._closedByUs
        if not clean:
            self.done.errback(reason)
        elif not self._finished:
            self.done.errback(Failure(ServerClosedError("the server closed the connection before the input ended")))
        elif self.bytes_sent and not self.bytes_received:
            # capserv answers every byte; silence means it refused us.
            self.done.errback(
                Failure(ServerClosedError("the server closed the connection without replying (over a limit?)"))
            )
        else:
            self.done.callback(None)

    def _closeFromHere(self) -> None:
        self._closedByUs = True
        self.transport.loseConnection()  # type: ignore[union-attr]


def _is_tls(transport: object) -> bool:
    from twisted.internet.interfaces import ISSLTransport

    return ISSLTransport.providedBy(transport)


def open_stream(
    endpoint: IStreamClientEndpoint,
    on_data: Callable[[bytes], None],
    clock: IReactorTime | None = None,
    idle_timeout: float = 5.0,
    ascii_only: bool = False,
) -> Deferred[StreamSession]:
    """
    Connect and return a `StreamSession` once connected.
    """
    from twisted.internet.protocol import Factory

    factory = Factory.forProtocol(lambda: StreamSession(on_data, clock, idle_timeout, ascii_only))
    return endpoint.connect(factory)  # type: ignore[return-value]


def tcp_request(
    endpoint: IStreamClientEndpoint,
    data: bytes,
    clock: IReactorTime | None = None,
    idle_timeout: float = 5.0,
    ascii_only: bool = False,
) -> Deferred[bytes]:
    """
    Send one message over a new connection and return the whole reply.

    :return: a `Deferred` firing with the uppercase bytes.
    """
    received: list[bytes] = []

    def connected(session: StreamSession) -> Deferred[None]:
        session.write(data)
        session.finish()
        return session.done

    d = open_stream(endpoint, received.append, clock, idle_timeout, ascii_only)
    return d.addCallback(connected).addCallback(lambda _: b"".join(received))


class _UDPRequest(DatagramProtocol):
    """
    One UDP request from its own port: send, wait, retry, give up.
    """

    noisy = False

    def __init__(self, clock: IReactorTime, address: tuple[str, int], data: bytes, timeout: float, tries: int) -> None:
        self.clock = clock
        self.address = address
        self.data = data
        self.timeout = timeout
        self.tries = tries
        self.sent = 0
        self.result: Deferred[bytes] = Deferred()
        self._timer: IDelayedCall | None = None

    def startProtocol(self) -> None:
        self._send()

    def _send(self) -> None:
        self.sent += 1
        try:
            self.transport.write(self.data, self.address)  # type: ignore[union-attr]
        except OSError as e:
            self._fail(Failure(e))
            return
        self._timer = self.clock.callLater(self.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        if self.sent < self.tries:
            self._send()
        else:
            self._fail(Failure(NoReplyError(self.address, self.sent, self.timeout)))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if (_normal(addr[0]), addr[1]) != (_normal(self.address[0]), self.address[1]) or self.result.called:
            return
        self._finish()
        if len(data) > MAX_UDP_REPLY:
            self.result.errback(
                Failure(ReplyTooLongError(f"the reply from {_show(addr)} was longer than {MAX_UDP_REPLY} bytes"))
            )
            return
        self.result.callback(data)

    def connectionRefused(self) -> None:
        # ICMP port unreachable: keep trying; the server may be starting.
        pass

    def _fail(self, failure: Failure) -> None:
        if not self.result.called:
            self._finish()
            self.result.errback(failure)

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _normal(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def resolve_udp(reactor: Any, host: str, port: int) -> Deferred[tuple[str, int]]:
    """
    Resolve a host name (or IP literal) for UDP, IPv4 or IPv6.
    """
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    if isIPAddress(host) or isIPv6Address(host):
        return succeed((host, port))

    def lookup() -> tuple[str, int]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0]), port

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), lookup)


def udp_request(
    reactor: Any, host: str, port: int, data: bytes, timeout: float = 1.0, retries: int = 3
) -> Deferred[bytes]:
    """
    Send one datagram and return the reply, retrying after ``timeout``
    seconds up to ``retries`` more times.

    :param host: an IP address or a name (resolved first).
    :return: a `Deferred` firing with the whole reply (up to
        `MAX_UDP_REPLY` bytes), or failing with `NoReplyError` after the
        last try, `MessageTooLongError` if ``data`` does not fit in one
        datagram, or `ReplyTooLongError` if the reply could not be read
        whole.
    """

    def send(address: tuple[str, int]) -> Deferred[bytes]:
        limit = max_udp_message(address[0])
        if len(data) > limit:
            return fail(MessageTooLongError(len(data), limit))
        request = _UDPRequest(reactor, address, data, timeout, retries + 1)
        interface = "::" if ":" in address[0] else "0.0.0.0"
        # One byte more than the longest reply: a longer one is then seen
        # as too long instead of arriving cut to the buffer's size.
        listening = reactor.listenUDP(0, request, interface=interface, maxPacketSize=MAX_UDP_REPLY + 1)

        def cleanup(result: object) -> Any:
            d = listening.stopListening()
            return (d if d is not None else succeed(None)).addCallback(lambda _: result)

        return request.result.addBoth(cleanup)

    return resolve_udp(reactor, host, port).addCallback(send)
