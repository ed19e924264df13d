"""
Serve Twisted stream protocols on the asyncio event loop's own transports.

Under Twisted's asyncio reactor, a connection accepted by Twisted goes
through Twisted's Python read and write path (``_readOrWrite``,
``doRead``, ``doWrite``) on top of the event loop's reader and writer
callbacks.  The event loop has transports of its own, and uvloop's are
written in C.  This module lets any Twisted ``IProtocolFactory`` (capserv's
`UppercaseFactory` unchanged) be served by the loop's server and
transports (``loop.create_server(..., sock=sock)``), through a small
adapter, `NativeTransport`, that gives the Twisted protocol the
transport it expects:

    - ``ITransport``/``ITCPTransport``: ``write``, ``writeSequence``,
      ``loseConnection`` (after the buffer is sent), ``abortConnection``,
      ``loseWriteConnection``, ``getPeer``/``getHost`` as Twisted
      addresses (`IPv4Address`, `IPv6Address`, `UNIXAddress`), the
      ``connected`` and ``disconnecting`` attributes and ``bufferSize``
      (the write buffer's high-water mark);
    - half-close: end of input calls ``readConnectionLost`` on an
      `IHalfCloseableProtocol` and keeps the write side open;
    - backpressure both ways: the loop's ``pause_writing`` and
      ``resume_writing`` drive the producer the protocol registered, and
      the transport's own ``pauseProducing``/``resumeProducing`` stop and
      start reading;
    - ``connectionLost`` with `ConnectionDone` on a clean close,
      `ConnectionAborted` after ``abortConnection`` and `ConnectionLost`
      on an error.

`native_supported` says whether it can be used; `NativeSocketEndpoint`
is an ``IStreamServerEndpoint`` over a socket that is already bound and
listening; `capserv.endpoints.native.native_endpoint` turns a ``tcp:``, ``tcp6:`` or ``unix:``
description into one (and any other description into Twisted's endpoint),
for embedding programs.  Setting ``CAPSERV_NATIVE=0`` in the environment
turns the native path off.

TLS (``ssl:``), the PROXY protocol (``haproxy:``) and every other reactor
keep Twisted's own transports.  UDP does too: `listen_datagrams` serves a
``DatagramProtocol`` through uvloop's datagram transport, but only when
asked (`native_datagrams_supported`, ``CAPSERV_NATIVE_UDP=1``), because it
did not measure faster than Twisted's UDP port.

Nothing here reads a private attribute.  One behaviour is relied on and
checked: ``loop.create_server(sock=...)`` finishes without the loop
running (CPython's yields once, through ``asyncio.sleep(0)``; uvloop's
not at all), so `NativeSocketEndpoint.listen` can return a Deferred that
has fired; were a loop to truly wait there, the Deferred fires when it has
(`_run_now`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamServerEndpoint,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DEFAULT_BACKLOG",
    "NativeDatagramPort",
    "NativePort",
    "NativeSocketEndpoint",
    "NativeTransport",
    "asyncio_loop",
    "listen_datagrams",
    "native_datagrams_supported",
    "native_supported",
]

_log = Logger(namespace="capserv.native")

#: The listen backlog used when none is given.  The event loop calls
#: ``listen()`` again on the socket it is handed, so the backlog the socket
#: was made with is replaced by this one (capserv's `capserv.daemon.listen`
#: default is the same number).
DEFAULT_BACKLOG = 1024

#: The most bytes one connection hands its protocol per turn of the event
#: loop: what Twisted's own TCP transport reads at once.  The event loops
#: read more (asyncio up to 256 KiB; uvloop 250 KB, and again, up to 32
#: times, while the socket has more: 8 MB in one turn), and uppercasing
#: 256 KiB of random bytes takes milliseconds; the rest of a larger read
#: waits for the next turns, with reading paused meanwhile.
_TURN_BYTES = 65536


def asyncio_loop(reactor: Any) -> Any:
    """
    The asyncio event loop under Twisted's asyncio reactor, or `None` for
    any other reactor.

    ``AsyncioSelectorReactor`` keeps its loop in ``_asyncioEventloop`` and
    offers no public accessor (twisted#9967 asks for asyncio's transports to
    be used; nothing public exposes the loop yet).
    """
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:
        return None
    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    return getattr(reactor, "_asyncioEventloop", None)


def native_supported(reactor: Any) -> bool:
    """
    Whether streams on ``reactor`` can be served by its event loop's own
    transports: it is Twisted's asyncio reactor, and ``CAPSERV_NATIVE`` is
    not ``"0"`` in the environment.

    :param reactor: the reactor connections would be served on.
    :return: `True` if `NativeSocketEndpoint` can be used.
    """
    if os.environ.get("CAPSERV_NATIVE", "") == "0":
        return False
    return asyncio_loop(reactor) is not None


def _address(kind: int, address: Any) -> IAddress:
    """
    A Twisted address for a socket address of family ``kind``.
    """
    if kind == socket.AF_INET:
        return IPv4Address("TCP", address[0], address[1])
    if kind == socket.AF_INET6:
        return IPv6Address("TCP", *address)
    # An unnamed peer: Twisted's UNIX port hands buildProtocol the empty
    # name (getPeer says None, below).
    return UNIXAddress(address or "")


class _Listening:
    """
    What every connection of one listening socket shares.
    """

    __slots__ = ("factory", "family", "loop")

    def __init__(self, factory: IProtocolFactory, family: int, loop: asyncio.AbstractEventLoop) -> None:
        self.factory = factory
        self.family = family
        self.loop = loop


@implementer(ITCPTransport, IConsumer, IPushProducer, ISystemHandle)
class NativeTransport(asyncio.Protocol):
    """
    One connection: an asyncio protocol to the event loop, a Twisted
    transport to the Twisted protocol the factory builds for it.

    Built by the event loop's server for each accepted connection; the
    Twisted protocol is built in `connection_made`, from the peer's
    address, with ``factory.buildProtocol`` (`None` closes the connection
    at once, as Twisted does).
    """

    __slots__ = (
        "_aborted",
        "_error",
        "_held",
        "_held_from",
        "_listening",
        "_paused",
        "_peer",
        "_producer",
        "_protocol",
        "_read_eof",
        "_slice_due",
        "_streaming",
        "_transport",
        "_write_open",
        "connected",
        "disconnecting",
    )

    def __init__(self, listening: _Listening) -> None:
        self._listening = listening
        self._transport: Any = None
        self._protocol: IProtocol | None = None
        self._peer: IAddress | None = None
        self._producer: IProducer | None = None
        self._streaming = False
        self._read_eof = False
        self._write_open = False
        self._aborted = False
        self._error: Failure | None = None
        #: Bytes read but not yet handed on (from ``_held_from``): the rest
        #: of a read larger than ``_TURN_BYTES``.
        self._held = b""
        self._held_from = 0
        #: Whether the next slice of ``_held`` is scheduled.
        self._slice_due = False
        #: Whether the Twisted side asked to stop reading (`pauseProducing`).
        self._paused = False
        #: Whether the connection is open (Twisted's attribute).
        self.connected = False
        #: Whether `loseConnection` or `abortConnection` was called.
        self.disconnecting = False

    # -- asyncio.Protocol: called by the event loop ----------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        A connection was accepted: build its Twisted protocol and connect it.
        """
        self._transport = transport
        listening = self._listening
        peername = transport.get_extra_info("peername")
        if peername is None and listening.family != socket.AF_UNIX:
            # The peer reset the connection before it was handed over
            # (uvloop then has no address): nothing to serve; close it, or
            # the loop would keep the socket.
            transport.abort()  # type: ignore[attr-defined]
            return
        peer = _address(listening.family, peername)
        self._peer = peer
        try:
            protocol = listening.factory.buildProtocol(peer)
        except Exception:
            _log.failure("Building a protocol for {peer} failed", peer=peer)
            protocol = None
        if protocol is None:
            transport.close()
            return
        self._protocol = protocol
        self.connected = True
        self._write_open = True
        try:
            protocol.makeConnection(self)
        except Exception:
            self._fail(Failure())

    def data_received(self, data: bytes) -> None:
        """
        Bytes arrived: the Twisted protocol's ``dataReceived``, at most
        ``_TURN_BYTES`` of them per turn of the event loop.
        """
        if self._protocol is None:
            return
        if len(data) <= _TURN_BYTES and not self._held:
            self._deliver(data)
            return
        # Too much for one turn: hold it, stop reading, and hand it on a
        # slice a turn (the first one now), so other connections are served
        # in between.
        if self._held:
            data = self._held[self._held_from :] + data
        self._held, self._held_from = data, 0
        transport = self._transport
        if not transport.is_closing() and transport.is_reading():
            transport.pause_reading()
        if not self._slice_due:
            self._next_slice()

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            protocol.dataReceived(data)
        except Exception:
            self._fail(Failure())

    def _next_slice(self) -> None:
        """
        Hand the protocol the next slice of what is held, then schedule the
        next one, or read again once all is handed on.  Nothing while the
        Twisted side has paused reading (`resumeProducing` goes on).
        """
        self._slice_due = False
        if self._protocol is None or self.disconnecting:
            self._held = b""  # as Twisted's transports stop reading on loseConnection
            return
        if self._paused:
            return
        if not self._held:
            self.resumeProducing()
            return
        held, start = self._held, self._held_from
        end = start + _TURN_BYTES
        if end < len(held):
            self._held_from = end
            self._deliver(held[start:end])
        else:
            self._held, self._held_from = b"", 0
            self._deliver(held[start:] if start else held)
        # The next slice, or reading again, on the next turn (reading now
        # would hand on a second slice in this one).
        self._slice_due = True
        self._listening.loop.call_soon(self._next_slice)

    def eof_received(self) -> bool:
        """
        The peer shut its sending side: ``readConnectionLost`` for an
        `IHalfCloseableProtocol`, which keeps the write side open.

        :return: whether the event loop should keep the connection open.
        """
        self._read_eof = True
        if self._held:
            # Not seen (reading is paused while bytes are held), but the
            # order holds whatever a loop does: every byte before the end.
            held, self._held = self._held[self._held_from :], b""
            self._deliver(held)
        protocol = self._protocol
        half = IHalfCloseableProtocol(protocol, None)
        if half is None or not self._write_open:
            return False  # the loop closes the connection
        try:
            half.readConnectionLost()
        except Exception:
            self._fail(Failure())
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """
        The connection is closed: stop the producer and tell the protocol,
        with Twisted's reason (`ConnectionDone`, `ConnectionAborted`,
        `ConnectionLost`, or the protocol's own error).
        """
        self.connected = False
        self._write_open = False
        self._held = b""
        producer, self._producer = self._producer, None
        protocol, self._protocol = self._protocol, None
        if producer is not None:
            producer.stopProducing()
        if protocol is None:
            return
        if self._error is not None:
            reason = self._error
        elif self._aborted:
            reason = Failure(ConnectionAborted())
        elif exc is None:
            reason = connectionDone
        else:
            reason = Failure(ConnectionLost(str(exc)))
        protocol.connectionLost(reason)

    def pause_writing(self) -> None:
        """
        The write buffer passed its high-water mark: pause a streaming
        producer.
        """
        producer = self._producer
        if producer is not None and self._streaming:
            producer.pauseProducing()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        """
        The write buffer drained to its low-water mark: resume the producer.
        """
        producer = self._producer
        if producer is None:
            return
        if self._streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]
        else:
            self._pull()

    def _fail(self, failure: Failure) -> None:
        """
        The Twisted protocol raised: log it and drop the connection, as
        Twisted's own transports do, with the error as the reason.
        """
        _log.failure("Unhandled error in protocol for {peer}", failure, peer=self._peer)
        if self._error is None:
            self._error = failure
        self._aborted = True
        self.disconnecting = True
        self._write_open = False
        if self._transport is not None:
            self._transport.abort()

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Send ``data`` (at once if the socket takes it, else buffered).
        Ignored once the write side is closed, as in Twisted.
        """
        if self._write_open:
            self._transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """
        Send each of ``data`` in order.
        """
        if self._write_open:
            self._transport.writelines(data)

    def loseConnection(self) -> None:
        """
        Close once everything buffered is sent.

        The sending side is shut down first (as Twisted's TCP transport
        does), so a peer whose last bytes were never read sees the end of
        the stream before the kernel resets the connection.  Writes after
        this are ignored.
        """
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            transport = self._transport
            if self._write_open and transport.can_write_eof():
                self._write_open = False
                transport.write_eof()
            transport.close()

    def abortConnection(self) -> None:
        """
        Close at once, dropping whatever is buffered.
        """
        if self.connected and not self._aborted:
            self._aborted = True
            self.disconnecting = True
            self._write_open = False
            self._transport.abort()

    def loseWriteConnection(self) -> None:
        """
        Half-close: send what is buffered, then shut down the sending side.
        """
        if not self._write_open:
            return
        self._write_open = False
        transport = self._transport
        if self._read_eof or not transport.can_write_eof():
            self.loseConnection()
            return
        transport.write_eof()
        half = IHalfCloseableProtocol(self._protocol, None)
        if half is not None:
            self._listening.loop.call_soon(self._write_lost, half)

    def _write_lost(self, half: IHalfCloseableProtocol) -> None:
        if self.connected:
            half.writeConnectionLost()

    def getPeer(self) -> IAddress:  # type: ignore[override]  # UNIXAddress too
        """
        :return: the peer's address (`IPv4Address`, `IPv6Address` or
            `UNIXAddress`).
        """
        peer = self._peer
        assert peer is not None
        if isinstance(peer, UNIXAddress) and not peer.name:
            return UNIXAddress(None)  # as Twisted's UNIX transport says
        return peer

    def getHost(self) -> IAddress:  # type: ignore[override]  # UNIXAddress too
        """
        :return: this side's address.
        """
        return _address(self._listening.family, self._transport.get_extra_info("sockname"))

    def getHandle(self) -> Any:
        """
        :return: the connection's socket (a stand-in object on uvloop).
        """
        return self._transport.get_extra_info("socket")

    def _socket_option(self, level: int, option: int, value: bool | None) -> bool:
        sock = self._transport.get_extra_info("socket")
        if sock is None or self._listening.family == socket.AF_UNIX:
            return False
        if value is not None:
            sock.setsockopt(level, option, int(value))
        return bool(sock.getsockopt(level, option))

    def getTcpNoDelay(self) -> bool:
        """:return: whether Nagle's algorithm is off (the event loop turns it off)."""
        return self._socket_option(socket.IPPROTO_TCP, socket.TCP_NODELAY, None)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """:param enabled: turn Nagle's algorithm off (`True`) or on."""
        self._socket_option(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        """:return: whether TCP keepalives are on."""
        return self._socket_option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, None)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """:param enabled: turn TCP keepalives on or off."""
        self._socket_option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    @property
    def write_buffer_size(self) -> int:
        """
        How many written bytes are not yet sent (the event loop transport's
        ``get_write_buffer_size()``).
        """
        if self._transport is None:
            return 0
        size: int = self._transport.get_write_buffer_size()
        return size

    @property
    def bufferSize(self) -> int:
        """
        The write buffer's high-water mark: past it the registered producer
        is paused.  Setting it sets the event loop transport's limits
        (``set_write_buffer_limits(high=...)``; the low mark is a quarter of
        it).
        """
        high: int = self._transport.get_write_buffer_limits()[1]
        return high

    @bufferSize.setter
    def bufferSize(self, value: int) -> None:
        self._transport.set_write_buffer_limits(high=value)

    # -- IConsumer -------------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register a producer: a streaming one is paused while the write
        buffer is over `bufferSize` and resumed once it drains; a pull one
        is asked for more whenever the buffer has room.
        """
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because {self._producer!r} is registered")
        if not self.connected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self._pull()

    def unregisterProducer(self) -> None:
        """
        Forget the registered producer.
        """
        self._producer = None

    def _pull(self) -> None:
        producer = self._producer
        if producer is None or self._streaming or not self.connected:
            return
        producer.resumeProducing()  # type: ignore[attr-defined]
        transport = self._transport
        if (
            self._producer is producer
            and self.connected
            and transport.get_write_buffer_size() < transport.get_write_buffer_limits()[1]
        ):
            self._listening.loop.call_soon(self._pull)

    # -- IPushProducer: the protocol throttling what it reads ------------------

    def pauseProducing(self) -> None:
        """
        Stop reading from the peer (and handing on bytes already read).
        """
        self._paused = True
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()

    def resumeProducing(self) -> None:
        """
        Read from the peer again, once the bytes already read are handed on.
        """
        self._paused = False
        if self._held:
            if not self._slice_due:
                self._slice_due = True
                self._listening.loop.call_soon(self._next_slice)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    def stopProducing(self) -> None:
        """
        Close the connection.
        """
        self.loseConnection()


@implementer(IListeningPort)
class NativePort:
    """
    A listening socket served by the event loop: what
    `NativeSocketEndpoint.listen` returns.
    """

    def __init__(
        self,
        server: asyncio.AbstractServer,
        host: IAddress,
        factory: IProtocolFactory,
        path: tuple[str, int] | None,
        cleanup: Callable[[], object] | None = None,
    ) -> None:
        self._server: asyncio.AbstractServer | None = server
        self._host = host
        self._factory = factory
        self._path = path
        self._cleanup = cleanup

    def startListening(self) -> None:
        """
        Nothing to do: the port listens from the moment it is made.
        """

    def stopListening(self) -> Deferred[None]:
        """
        Close the listening socket; open connections stay open.

        :return: a `Deferred` that has fired: the socket is closed when
            this returns.
        """
        server, self._server = self._server, None
        if server is None:
            return succeed(None)
        server.close()
        if self._path is not None:
            path, inode = self._path
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        if self._cleanup is not None:
            self._cleanup()
        self._factory.doStop()
        return succeed(None)

    loseConnection = stopListening

    def getHost(self) -> IAddress:
        """
        :return: the address listened on.
        """
        return self._host


def _run_now(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """
    Run a coroutine that never waits for anything but a bare ``yield`` (as
    ``loop.create_server`` does: CPython's yields once, through
    ``asyncio.sleep(0)``, after it has started serving; uvloop's not at
    all) to its end, now, without the event loop running.

    :return: ``(True, result)``, or ``(False, task)`` when the coroutine
        waits for a real future: then it goes on as a task on the loop, and
        the task gives its result later.
    """
    for _ in range(100):
        try:
            waited = coroutine.send(None)
        except StopIteration as done:
            return True, done.value
        if waited is not None:
            # Something truly awaited: let the loop finish it.
            return False, loop.create_task(_resume(coroutine, waited))
    return False, loop.create_task(_resume(coroutine, None))


async def _resume(coroutine: Coroutine[Any, Any, Any], waited: Any) -> Any:
    """
    Finish, as a task, a coroutine that `_run_now` started, from where it
    waits (for ``waited``, a future, or for a bare ``yield``).
    """
    while True:
        if waited is None:
            await asyncio.sleep(0)
        else:
            # Wait without awaiting it here: the coroutine reads the outcome.
            await asyncio.wait([waited])
        try:
            waited = coroutine.send(None)
        except StopIteration as done:
            return done.value


@implementer(IStreamServerEndpoint)
class NativeSocketEndpoint:
    """
    Serve a listening socket with the event loop's own server and
    transports.

    :param reactor: Twisted's asyncio reactor (see `native_supported`).
    :param make_socket: returns a bound, listening, non-blocking stream
        socket (TCP over IPv4 or IPv6, or UNIX), or raises `OSError` (or
        `CannotListenError`) if it cannot.
    :param backlog: the listen backlog; the event loop sets it again on the
        socket it is given.
    :param interface: the address, for the error message of a socket that
        cannot be made.
    :param port: the port or path, for the same message.
    :param cleanup: called once the port has stopped listening (releases a
        UNIX socket's lock file, say).
    :param unlink: remove a UNIX socket's file when the port stops, as
        Twisted's UNIX port does (`False` for a socket someone else owns,
        such as one systemd passed).
    """

    def __init__(
        self,
        reactor: Any,
        make_socket: Callable[[], socket.socket],
        *,
        backlog: int = DEFAULT_BACKLOG,
        interface: str = "",
        port: int | str = 0,
        cleanup: Callable[[], object] | None = None,
        unlink: bool = True,
    ) -> None:
        self._reactor = reactor
        self._make_socket = make_socket
        self._backlog = backlog
        self._interface = interface
        self._port = port
        self._cleanup = cleanup
        self._unlink = unlink

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803 (the interface's name)
        """
        Listen with ``protocolFactory``.

        :return: a `Deferred` that has already fired, with a `NativePort`,
            or with `CannotListenError` if the socket could not be made; it
            fires before the reactor runs as well as while it runs.
        """
        loop = asyncio_loop(self._reactor)
        if loop is None:
            return fail(CannotListenError(self._interface, self._port, OSError("not Twisted's asyncio reactor")))
        try:
            sock = self._make_socket()
        except CannotListenError:
            return fail()
        except OSError as e:
            return fail(CannotListenError(self._interface, self._port, e))
        try:
            sock = _as_tcp(sock)
            sock.setblocking(False)
            family = sock.family
            host = _address(family, sock.getsockname())
            path = _filesystem_path(sock) if self._unlink else None
            listening = _Listening(protocolFactory, family, loop)
            coroutine = loop.create_server(partial(NativeTransport, listening), sock=sock, backlog=self._backlog)
            done, result = _run_now(loop, coroutine)
        except Exception as e:
            sock.close()
            if self._cleanup is not None:
                self._cleanup()
            return fail(CannotListenError(self._interface, self._port, e))

        def started(server: asyncio.AbstractServer) -> NativePort:
            protocolFactory.doStart()
            return NativePort(server, host, protocolFactory, path, self._cleanup)

        if done:
            return succeed(started(result))
        # An event loop whose create_server truly waits: fire when it is done.
        d: Deferred[Any] = Deferred.fromFuture(result)
        return d.addCallback(started)


def _as_tcp(sock: socket.socket) -> socket.socket:
    """
    The same TCP socket, saying it is TCP (``proto`` ``IPPROTO_TCP``, not
    0), so that asyncio's loop turns Nagle's algorithm off on the
    connections it accepts, as uvloop's does (asyncio checks ``proto``).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def _filesystem_path(sock: socket.socket) -> tuple[str, int] | None:
    """
    A UNIX socket's path and inode, to remove the socket file when the port
    stops (as Twisted's UNIX port does), or `None`.
    """
    if sock.family != socket.AF_UNIX:
        return None
    name = sock.getsockname()
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not name or name.startswith("\0"):
        return None
    try:
        info = os.stat(name)
    except OSError:
        return None
    return (name, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


# -- datagrams --------------------------------------------------------------------


def native_datagrams_supported(reactor: Any) -> bool:
    """
    Whether datagrams on ``reactor`` are to be served by its event loop's
    own datagram transport: only when asked (``CAPSERV_NATIVE_UDP=1``), on
    uvloop's loop, and with `native_supported`.

    Not by default, because it did not measure faster.  Twisted's UDP port
    on the asyncio reactor reads every datagram waiting in one go; one
    process serving both on uvloop's loop, alternating the load between
    them (``udp 50 x 64 B``, 6 runs of 1 s, load average 1), answered
    189,000 datagrams a second at 4.9 µs of CPU each on Twisted's port and
    177,000 at 5.3 µs on uvloop's transport (one early run that favoured
    uvloop's did not repeat).  asyncio's own datagram transport reads one
    datagram per wake-up and answered 30,000.  ``bench/run.py``'s
    ``-nativeudp`` variants measure it again.

    :param reactor: the reactor datagrams would be served on.
    """
    if os.environ.get("CAPSERV_NATIVE_UDP", "") != "1" or not native_supported(reactor):
        return False
    return type(asyncio_loop(reactor)).__module__.split(".")[0] == "uvloop"


@implementer(IListeningPort)
class NativeDatagramPort(asyncio.DatagramProtocol):
    """
    A UDP socket served by the event loop's datagram transport for a Twisted
    ``DatagramProtocol``: the protocol's transport (``write(datagram,
    addr)``, ``getHost``, ``maxPacketSize``) and the listening port
    (``stopListening``) in one.

    ``write`` raises `OSError` (``ENOBUFS``) instead of queueing once the
    transport holds ``write_limit`` bytes not yet sent, as Twisted's port
    raises when the socket will not take a datagram, so replies are dropped
    and counted instead of piling up.  A send that fails later is reported
    by the event loop: it goes to the protocol's ``send_error(error)`` if it
    has one (capserv's counts it), and is logged otherwise.

    Made by `listen_datagrams`.
    """

    #: The largest datagram read whole: the event loops read up to 64 KiB.
    maxPacketSize = 65535
    #: Bytes of replies that may wait to be sent before ``write`` refuses.
    write_limit = 262144

    def __init__(self, protocol: Any, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._protocol = protocol
        self._family = sock.family
        self._host = sock.getsockname()
        self._transport: Any = None
        #: The socket, shared with the transport (for empty datagrams).
        self._sock = sock
        self._stopped = False
        coroutine = loop.create_datagram_endpoint(lambda: self, sock=sock)
        done, result = _run_now(loop, coroutine)
        if not done:
            # Both loops wait for connection_made: the transport is made on
            # the loop's next turn (the socket is bound already, so
            # datagrams wait in its buffer meanwhile).
            result.add_done_callback(self._made)

    def _made(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.failure("Cannot serve datagrams on {address}", Failure(error), address=self.getHost())

    # -- asyncio.DatagramProtocol ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        The event loop's datagram transport is ready: start the protocol.
        """
        self._transport = transport
        if self._stopped:
            transport.close()
            return
        self._protocol.makeConnection(self)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """
        A datagram arrived: the protocol's ``datagramReceived``.
        """
        try:
            self._protocol.datagramReceived(data, addr)
        except Exception:
            _log.failure("Unhandled error in datagram protocol {protocol!r}", protocol=self._protocol)

    def error_received(self, exc: Exception) -> None:
        """
        A send failed after it was queued: the protocol's ``send_error``.
        """
        handler = getattr(self._protocol, "send_error", None)
        if handler is not None:
            handler(exc)
        else:
            _log.warn("Datagram error on {address}: {error}", address=self.getHost(), error=exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """
        The datagram transport is closed.
        """
        self._transport = None

    # -- the Twisted transport ---------------------------------------------

    def write(self, datagram: bytes, addr: Any) -> None:
        """
        Send ``datagram`` to ``addr`` (an address tuple as
        ``datagramReceived`` gives it).

        :raises OSError: with ``ENOBUFS`` when replies are piling up.
        """
        transport = self._transport
        if transport is None:
            raise OSError(errno.ENOTCONN, "datagram port is not serving")
        if not datagram:
            # The event loops' sendto drops an empty datagram; Twisted sends
            # it, and an empty request gets an empty reply.
            self._sock.sendto(datagram, addr)
            return
        if transport.get_write_buffer_size() > self.write_limit:
            raise OSError(errno.ENOBUFS, "too many datagrams waiting to be sent")
        transport.sendto(datagram, addr)

    def getHost(self) -> IAddress:
        """
        :return: the address listened on.
        """
        if self._family == socket.AF_INET6:
            return IPv6Address("UDP", *self._host)
        return IPv4Address("UDP", self._host[0], self._host[1])

    def startListening(self) -> None:
        """
        Nothing to do: the port listens from the moment it is made.
        """

    def stopListening(self) -> Deferred[None]:
        """
        Close the socket and tell the protocol (``doStop``).

        :return: a `Deferred` that has fired.
        """
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._transport is not None:
            self._transport.close()
            self._protocol.doStop()
        # Else not serving yet: connection_made will close the transport.
        return succeed(None)

    loseConnection = stopListening


def listen_datagrams(reactor: Any, protocol: Any, make_socket: Callable[[], socket.socket]) -> NativeDatagramPort:
    """
    Serve a bound UDP socket with the event loop's datagram transport (see
    `native_datagrams_supported` for when that is faster).

    :param reactor: Twisted's asyncio reactor.
    :param protocol: a Twisted ``DatagramProtocol``.
    :param make_socket: returns the bound socket, or raises `OSError`.
    :return: the port; the protocol starts (``startProtocol``) on the
        loop's next turn.
    :raises CannotListenError: if the socket cannot be made.
    """
    loop = asyncio_loop(reactor)
    try:
        if loop is None:
            raise OSError("not Twisted's asyncio reactor")
        sock = make_socket()
        sock.setblocking(False)
    except OSError as e:
        raise CannotListenError("", 0, e) from None
    return NativeDatagramPort(protocol, sock, loop)
