"""
TCP requests and sessions: a reply is complete when the server closes after the client half-closed.  TLS
has no half-close in Twisted, so there the client predicts the reply's length with capserv's codec, or takes
``idle_timeout`` seconds of silence as its end.  Cancelling a returned Deferred closes the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, cast
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
    ISSLTransport,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from capserv.protocols._twisted import global_reactor
from capserv.protocols.config import Clock
from capserv.protocols.text import Uppercaser

_P = ParamSpec("_P")


class StreamClientEndpoint(TypingProtocol):
    """Any Twisted ``IStreamClientEndpoint``, by shape (no zope plugin needed)."""

    def connect(self, protocolFactory: IProtocolFactory, /) -> Deferred[IProtocol]: ...  # noqa: N803


class ClientReactor(TypingProtocol):
    """What the client needs of a reactor, checked by its shape: every Twisted reactor has it."""

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


def check_seconds(name: str, value: float | None, optional: bool = True) -> None:
    """`ValueError` unless ``value`` is a finite number of seconds more than 0, or `None` if ``optional``."""
    if value is None and optional:
        return
    if not (isinstance(value, (int, float)) and 0 < value < float("inf")):  # NaN too; Twisted would only assert
        none = ", or None for no limit" if optional else ""
        raise ValueError(f"{name} must be a number of seconds more than 0{none}; not {value!r}")


class CapservClientError(Exception):
    """The base of the errors the client detects itself; the endpoint's connection errors are Twisted's own."""


class ReplyTimeoutError(CapservClientError):
    """A reply did not arrive whole in time; the connection was closed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no whole reply within {seconds:g}s")
        self.seconds = seconds


class ServerClosedError(CapservClientError):
    """The server ended a TCP session before it was complete."""


class StreamSession(Protocol):
    """
    A streaming TCP session: `write` bytes, receive the uppercase bytes through ``on_data``, `finish` the
    input, and wait for `done` (cancelling it aborts).  Flow control is the transport's: register a producer
    with ``session.transport``, and pause the session to stop reading.

    :param clock: for the timeouts; the global reactor if `None`.
    :param idle_timeout: without half-close (TLS): seconds of silence after `finish` that end the reply.
    :param ascii_only: the server runs with ``--ascii``.
    :param half_close: end the input by half-closing; `None` decides from the transport (not over TLS);
        `False` where ``loseWriteConnection`` is accepted but not delivered (``twisted.test.iosim``).
    :param reply_timeout: seconds of unpaused silence after `finish` before `done` fails with
        `ReplyTimeoutError`; `None` waits for the connection.
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
        check_seconds("idle_timeout", idle_timeout, optional=False)
        check_seconds("reply_timeout", reply_timeout)
        self.on_data = on_data
        #: Fires with `None` once the server closed after sending everything.
        self.done: Deferred[None] = Deferred(lambda _: self.abort())
        self._clock, self._halfClose = cast(IReactorTime, clock or global_reactor()), half_close
        self._idleTimeout, self._replyTimeout = idle_timeout, reply_timeout
        self.bytes_sent = self.bytes_received = self._expected = 0
        self._predictor = Uppercaser(ascii_only=ascii_only)
        self._finished = self._paused = self._closedByUs = False
        self._timer: IDelayedCall | None = None
        self._failure: Failure | None = None
        #: Whether the input ends by half-closing (known once connected).
        self.half_closes = False

    def connectionMade(self) -> None:
        can = hasattr(self.transport, "loseWriteConnection") and not ISSLTransport.providedBy(self.transport)
        self.half_closes = can if self._halfClose is None else self._halfClose

    def write(self, data: bytes) -> None:
        """Send bytes to be uppercased."""
        self.bytes_sent += len(data)
        if not self.half_closes:
            self._expected += len(self._predictor.feed(data))
        self.transport.write(data)  # type: ignore[union-attr]

    def finish(self) -> None:
        """End the input, so that the server sends what it owes and closes."""
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
        """Stop reading replies (silence then is not the server's)."""
        self._paused = True
        self._stopTimer()
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._finished:
            self._progress()

    def stopProducing(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Close the connection at once and stop the timers; `done` fails."""
        self._stopTimer()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _progress(self) -> None:
        """After `finish`: close once the predicted reply is here, else (re)start the silence timer."""
        if not self.half_closes and self.bytes_received >= self._expected:
            self._closeFromHere()
            return
        seconds = self._idleTimeout if self._replyTimeout is None and not self.half_closes else self._replyTimeout
        if seconds is None or self._paused or self._closedByUs:
            return
        self._stopTimer()
        self._timer = self._clock.callLater(seconds, self._silent, seconds)

    def _silent(self, seconds: float) -> None:
        self._timer = None
        if not self.half_closes and self.bytes_received:
            self._closeFromHere()  # some reply came, shorter than predicted: take it as whole
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
        if self._failure is not None:
            self.done.errback(self._failure)
        elif reason.check(ConnectionDone) is None and not self._closedByUs:
            self.done.errback(reason)
        elif not self._finished:
            self.done.errback(ServerClosedError("the server closed the connection before the input ended"))
        elif self.bytes_sent and not self.bytes_received:  # capserv answers every byte: it refused us
            self.done.errback(
                ServerClosedError(
                    "the server closed the connection without replying "
                    "(over a limit, or a haproxy: port that wants a PROXY header?)"
                )
            )
        else:
            self.done.callback(None)

    def _closeFromHere(self) -> None:
        self._stopTimer()
        self._closedByUs = True
        self.transport.loseConnection()  # type: ignore[union-attr]


def _connecting(
    session: Callable[_P, StreamSession],
) -> Callable[Concatenate[StreamClientEndpoint, _P], Deferred[StreamSession]]:
    def open_stream(endpoint: StreamClientEndpoint, /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[StreamSession]:
        """
        Connect a `StreamSession` (made with the other arguments) and fire with
        it once connected; cancelling before then stops connecting.
        """
        session(*args, **kwargs)  # one made now, to raise for bad arguments here rather than once connected
        return endpoint.connect(Factory.forProtocol(lambda: session(*args, **kwargs)))  # type: ignore[return-value]

    return open_stream


open_stream = _connecting(StreamSession)


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
    Send one message over a new connection and fire with the whole reply; after ``timeout`` seconds
    (connecting included; `None`: no limit) abort with `ReplyTimeoutError`.  ``half_close``: see `StreamSession`.
    """
    check_seconds("timeout", timeout)
    received: list[bytes] = []

    def connected(session: StreamSession) -> Deferred[None]:
        session.write(data)
        session.finish()
        return session.done

    def timed_out(result: object, seconds: float) -> bytes:
        raise ReplyTimeoutError(seconds)

    reply = open_stream(endpoint, received.append, clock, idle_timeout, ascii_only, half_close)
    reply.addCallback(connected).addCallback(lambda _: b"".join(received))
    if timeout is not None:
        reply.addTimeout(timeout, cast(IReactorTime, clock or global_reactor()), onTimeoutCancel=timed_out)
    return reply  # type: ignore[return-value]
