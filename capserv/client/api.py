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

Cancelling and timing out
    Cancelling a Deferred the API returns (``d.cancel()``, ``addTimeout``,
    or an asyncio task awaiting ``d.asFuture(loop)``) closes the connection
    or the UDP port and stops every timer.  `tcp_request` takes an overall
    ``timeout``; `udp_request` gives up after its tries.

Errors
    Every error the client raises for what happened on the wire, or for a
    message it cannot send, is a `CapservClientError`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IReactorFromThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from capserv.protocols.text import Uppercaser
from capserv.protocols.udp import MAX_DATAGRAM, MAX_REPLY_IPV4, MAX_REPLY_IPV6

__all__ = [
    "MAX_UDP_REPLY",
    "CapservClientError",
    "ClientReactor",
    "MessageTooLongError",
    "NoReplyError",
    "ReplyTimeoutError",
    "ReplyTooLongError",
    "ServerClosedError",
    "StreamSession",
    "open_stream",
    "resolve_udp",
    "tcp_request",
    "udp_request",
]


class ClientReactor(TypingProtocol):
    """
    What the client needs of a reactor (`IReactorTCP`, `IReactorUDP`,
    `IReactorTime` and `IReactorThreads` together), checked by its shape:
    every Twisted reactor has it.
    """

    def connectTCP(self, host: str, port: int, factory: ClientFactory, timeout: float = ...) -> IConnector: ...

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = ...,
        maxPacketSize: int = ...,  # noqa: N803
    ) -> IListeningPort: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> IDelayedCall: ...

    def getThreadPool(self) -> ThreadPool: ...


class CapservClientError(Exception):
    """
    The base of every error the client raises for what happened on the wire
    or for a message it cannot send.
    """


class NoReplyError(CapservClientError):
    """
    A UDP request got no reply after every try.
    """

    def __init__(self, address: tuple[str, int], tries: int, timeout: float) -> None:
        #: What happened, without the address (for a caller that names it).
        self.reason = f"no reply after {tries} {'try' if tries == 1 else 'tries'} ({timeout:g}s each)"
        super().__init__(f"{_show(address)}: {self.reason}")
        self.address = address
        self.tries = tries
        self.timeout = timeout


class ReplyTimeoutError(CapservClientError):
    """
    A TCP request's reply did not arrive whole within its timeout; the
    connection was closed.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no whole reply within {seconds:g}s")
        self.seconds = seconds


#: The longest UDP reply the client reads whole.
MAX_UDP_REPLY = MAX_DATAGRAM


class ReplyTooLongError(CapservClientError):
    """
    A UDP reply was longer than `MAX_UDP_REPLY` bytes and could not be read
    whole.
    """


class MessageTooLongError(CapservClientError, ValueError):
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


class ServerClosedError(CapservClientError):
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
    full, and pause the session (`pauseProducing`) to stop reading replies.
    Cancelling `done` aborts the connection.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        clock: IReactorTime | None = None,
        idle_timeout: float = 5.0,
        ascii_only: bool = False,
        half_close: bool | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        """
        :param on_data: called with each piece of the reply.
        :param clock: for the timeouts; the global reactor if `None`.
        :param idle_timeout: over a transport without half-close (TLS),
            seconds without data after `finish` before taking what arrived
            as the whole reply (the server may uppercase differently).
        :param ascii_only: the server runs with ``--ascii``.
        :param half_close: whether to end the input by half-closing; `None`
            decides from the transport (not over TLS).  `False` makes the
            client close once the reply's predicted length has arrived, for
            transports that have ``loseWriteConnection`` but do not deliver
            it (``twisted.test.iosim``).
        :param reply_timeout: seconds without data after `finish` (while
            the session is not paused) before `done` fails with
            `ReplyTimeoutError` and the connection is aborted; `None` waits
            as long as the connection lasts.
        """
        self.on_data = on_data
        self._clock = clock
        self._idleTimeout = idle_timeout
        self._replyTimeout = reply_timeout
        self._halfClose = half_close
        #: Fires with `None` once the server has closed the connection
        #: (after sending everything), or fails with why it was lost.
        self.done: Deferred[None] = Deferred(lambda _: self.abort())
        self.bytes_sent = 0
        self.bytes_received = 0
        self._predictor = Uppercaser(ascii_only=ascii_only)
        self._expected = 0
        self._finished = False
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._closedByUs = False
        self._failure: Failure | None = None
        #: Whether the transport can shut down only its sending side (TLS
        #: cannot); known once connected.
        self.half_closes = False

    def connectionMade(self) -> None:
        transport = self.transport
        half_close = self._halfClose
        if half_close is None:
            half_close = hasattr(transport, "loseWriteConnection") and not _is_tls(transport)
        self.half_closes = half_close

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
        self._progress()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.on_data(data)
        if self._finished:
            self._progress()

    def pauseProducing(self) -> None:
        """
        Stop reading replies (and stop counting silence as the server's).
        """
        self._paused = True
        self._stopTimer()
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        """
        Read replies again.
        """
        self._paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._finished:
            self._progress()

    def stopProducing(self) -> None:
        """
        Abort the connection: whoever consumed the reply went away.
        """
        self.abort()

    def abort(self) -> None:
        """
        Close the connection at once and stop the timers; `done` fails.
        """
        self._stopTimer()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _progress(self) -> None:
        """
        After `finish`: close if the predicted reply is all here, else
        (re)start the timer that bounds the server's silence.
        """
        if not self.half_closes and self.bytes_received >= self._expected:
            self._closeFromHere()
            return
        seconds = self._replyTimeout
        if seconds is None and not self.half_closes:
            seconds = self._idleTimeout
        if seconds is None or self._paused or self._closedByUs:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(seconds)
            return
        clock = self._clock
        if clock is None:
            from capserv.protocols._twisted import global_reactor

            clock = self._clock = global_reactor()
        assert clock is not None
        self._timer = clock.callLater(seconds, self._silent, seconds)

    def _silent(self, seconds: float) -> None:
        self._timer = None
        if not self.half_closes and self.bytes_received:
            # Some reply came, shorter than predicted: take it as whole.
            self._closeFromHere()
            return
        self._failure = Failure(ReplyTimeoutError(seconds))
        self.abort()

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if self.done.called:  # cancelled
            return
        clean = reason.check(ConnectionDone) is not None or self._closedByUs
        if self._failure is not None:
            self.done.errback(self._failure)
        elif not clean:
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
        self._stopTimer()
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
    half_close: bool | None = None,
    reply_timeout: float | None = None,
) -> Deferred[StreamSession]:
    """
    Connect and return a `StreamSession` once connected (the parameters
    are `StreamSession`'s).  Cancelling the Deferred before it fires stops
    connecting.
    """
    from twisted.internet.protocol import Factory

    factory = Factory.forProtocol(
        lambda: StreamSession(on_data, clock, idle_timeout, ascii_only, half_close, reply_timeout)
    )
    return endpoint.connect(factory)  # type: ignore[return-value]


def tcp_request(
    endpoint: IStreamClientEndpoint,
    data: bytes,
    clock: IReactorTime | None = None,
    idle_timeout: float = 5.0,
    ascii_only: bool = False,
    timeout: float | None = None,
    half_close: bool | None = None,
) -> Deferred[bytes]:
    """
    Send one message over a new connection and return the whole reply.

    Cancelling the Deferred stops connecting or aborts the connection.

    :param timeout: seconds from now for connecting and the whole reply;
        then the connection is aborted and the Deferred fails with
        `ReplyTimeoutError`.  `None`: no limit.
    :param half_close: see `StreamSession`; `False` under
        ``twisted.test.iosim``.
    :return: a `Deferred` firing with the uppercase bytes.
    """
    received: list[bytes] = []

    def connected(session: StreamSession) -> Deferred[None]:
        session.write(data)
        session.finish()
        return session.done

    def timed_out(result: object, seconds: float) -> bytes:
        raise ReplyTimeoutError(seconds)

    d = open_stream(endpoint, received.append, clock, idle_timeout, ascii_only, half_close)
    reply = d.addCallback(connected).addCallback(lambda _: b"".join(received))
    if timeout is not None:
        if clock is None:
            from capserv.protocols._twisted import global_reactor

            clock = global_reactor()
        reply.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    return reply


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
        #: Cancelling it stops the retries (udp_request then closes the port).
        self.result: Deferred[bytes] = Deferred(lambda _: self._finish())
        self._timer: IDelayedCall | None = None

    def startProtocol(self) -> None:
        self._send()

    def _send(self) -> None:
        if self.result.called:
            return
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


def resolve_udp(reactor: ClientReactor, host: str, port: int) -> Deferred[tuple[str, int]]:
    """
    Resolve a host name (or IP literal) for UDP, IPv4 or IPv6.
    """
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    if isIPAddress(host) or isIPv6Address(host):
        return succeed((host, port))

    def lookup() -> tuple[str, int]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0]), port

    return threads.deferToThreadPool(cast(IReactorFromThreads, reactor), reactor.getThreadPool(), lookup)


def udp_request(
    reactor: ClientReactor, host: str, port: int, data: bytes, timeout: float = 1.0, retries: int = 3
) -> Deferred[bytes]:
    """
    Send one datagram and return the reply, retrying after ``timeout``
    seconds up to ``retries`` more times.

    :param host: an IP address or a name (resolved first).
    :return: a `Deferred` firing with the whole reply (up to
        `MAX_UDP_REPLY` bytes), or failing with `NoReplyError` after the
        last try, `MessageTooLongError` if ``data`` does not fit in one
        datagram, or `ReplyTooLongError` if the reply could not be read
        whole.  Cancelling it stops the retries and closes the port.
    """

    def send(address: tuple[str, int]) -> Deferred[bytes]:
        limit = max_udp_message(address[0])
        if len(data) > limit:
            return fail(MessageTooLongError(len(data), limit))
        request = _UDPRequest(cast(IReactorTime, reactor), address, data, timeout, retries + 1)
        interface = "::" if ":" in address[0] else "0.0.0.0"
        # One byte more than the longest reply: a longer one is then seen
        # as too long instead of arriving cut to the buffer's size.
        listening = reactor.listenUDP(0, request, interface=interface, maxPacketSize=MAX_UDP_REPLY + 1)

        def cleanup(result: object) -> Any:
            d = listening.stopListening()
            return (d if d is not None else succeed(None)).addCallback(lambda _: result)

        return request.result.addBoth(cleanup)

    return resolve_udp(reactor, host, port).addCallback(send)
