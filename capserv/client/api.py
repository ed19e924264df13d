"""
Client API for Twisted programs: one TCP request and a streaming TCP
session; `capserv.client` adds UDP requests (`udp_request`).  Every call
returns a `Deferred` and works on any reactor.

How a client knows a reply is complete
    Over TCP and UNIX sockets the client half-closes when it has sent
    everything; capserv then sends what it owes and closes, so the reply is
    complete when the connection ends.  TLS has no half-close in Twisted
    (``close_notify`` ends the whole session), so over TLS the client
    computes how long capserv's reply must be with capserv's own codec
    (UTF-8 rules, or ASCII rules with ``ascii_only``) and closes when that
    much has arrived, or after ``idle_timeout`` seconds without data if the
    server uppercases differently.  ``half_close=False`` asks for the same
    over a transport that claims half-close but does not deliver it
    (``twisted.test.iosim``).

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

from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from capserv.protocols.config import Clock
from capserv.protocols.text import Uppercaser

__all__ = [
    "CapservClientError",
    "ClientReactor",
    "ReplyTimeoutError",
    "ServerClosedError",
    "StreamClientEndpoint",
    "StreamSession",
    "open_stream",
    "tcp_request",
]


class StreamClientEndpoint(TypingProtocol):
    """Any Twisted ``IStreamClientEndpoint``, by shape (no zope plugin needed)."""

    def connect(self, protocolFactory: IProtocolFactory, /) -> Deferred[IProtocol]: ...  # noqa: N803


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


class ReplyTimeoutError(CapservClientError):
    """
    A TCP request's reply did not arrive whole within its timeout; the
    connection was closed.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no whole reply within {seconds:g}s")
        self.seconds = seconds


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
        clock: Clock | None = None,
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
        self._clock = cast("IReactorTime | None", clock)
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
                Failure(
                    ServerClosedError(
                        "the server closed the connection without replying "
                        "(over a limit, or a haproxy: port that wants a PROXY header?)"
                    )
                )
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
    endpoint: StreamClientEndpoint,
    on_data: Callable[[bytes], None],
    clock: Clock | None = None,
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
    endpoint: StreamClientEndpoint,
    data: bytes,
    clock: Clock | None = None,
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
        reply.addTimeout(timeout, cast(IReactorTime, clock), onTimeoutCancel=timed_out)
    return reply
