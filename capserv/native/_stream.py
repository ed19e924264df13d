"""
One stream connection on the event loop's own transport: `NativeTransport`
is an asyncio protocol to the loop and a Twisted transport (``ITCPTransport``,
``ITLSTransport``) to the Twisted protocol built for the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from socket import AF_INET, AF_UNIX
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProducer,
    IProtocol,
    IPushProducer,
    ISystemHandle,
    ITLSTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv.native._common import _log, address
from capserv.native._socket import _SocketMixin

if TYPE_CHECKING:
    from capserv.native._port import NativeConnections

__all__ = ["TURN_BYTES", "NativeTransport"]

#: The most bytes one connection hands its protocol per turn of the event
#: loop (what Twisted's TCP transport reads at once); the rest of a larger
#: read waits for later turns, with reading paused.
TURN_BYTES = 65536

_half_closeable = IHalfCloseableProtocol.providedBy


def _half_close(protocol: object) -> Any:
    """The protocol as an `IHalfCloseableProtocol`, or `None` (provided directly: no adapter lookup)."""
    return protocol if _half_closeable(protocol) else IHalfCloseableProtocol(protocol, None)


@implementer(ITLSTransport, IConsumer, IPushProducer, ISystemHandle, ILoggingContext)
class NativeTransport(_SocketMixin, asyncio.Protocol):  # type: ignore[override]  # getPeer: UNIXAddress too
    """
    One connection: an asyncio protocol to the event loop, a Twisted transport
    to the protocol ``factory.buildProtocol(peer)`` makes in `connection_made`
    (`None` closes the connection at once, as Twisted does).
    """

    __slots__ = (
        "__provides__",
        "_aborted",
        "_held",
        "_held_from",
        "_paused",
        "_producer",
        "_read_eof",
        "_reading_paused",
        "_slice_due",
        "_streaming",
        "connected",
        "disconnecting",
    )

    def __init__(self, connections: NativeConnections) -> None:
        self._listening = connections
        self._transport: Any = None
        self._protocol: IProtocol | None = None
        self._tls: Any = None
        self._peer: IAddress | None = None
        self._producer: IProducer | None = None
        self._streaming = self._paused = self._read_eof = self._write_open = self._aborted = False
        self._error: Failure | None = None
        self._session = 0
        # The rest of a read larger than TURN_BYTES, from _held_from on.
        self._held = b""
        self._held_from = 0
        self._slice_due = False  # the next slice of _held is scheduled
        self._reading_paused = False  # the Twisted side called pauseProducing
        self.connected = False
        self.disconnecting = False

    # -- asyncio.Protocol: called by the event loop ----------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Build the connection's Twisted protocol and connect it."""
        self._transport = transport
        listening = self._listening
        peername = transport.get_extra_info("peername")
        if peername is None and listening.family != AF_UNIX:
            # Reset before it was handed over (uvloop has no address): close
            # it, or the loop would keep the socket.
            transport.abort()  # type: ignore[attr-defined]
            return
        family = listening.family
        # IPv4, the common case, built here: one call less a connection.
        peer = self._peer = IPv4Address("TCP", *peername) if family == AF_INET else address(family, peername)
        try:
            protocol = listening.factory.buildProtocol(peer)
        except Exception:
            _log.failure("Building a protocol for {peer} failed", peer=peer)
            protocol = None
        if protocol is None:
            transport.close()
            return
        self._session = listening.sessions
        listening.sessions += 1
        self._protocol = protocol
        self.connected = self._write_open = True
        listening.open.add(self)
        try:
            protocol.makeConnection(self)
        except Exception:
            self._fail(Failure())

    def data_received(self, data: bytes) -> None:
        """``dataReceived``, at most ``TURN_BYTES`` per turn of the event loop."""
        protocol = self._protocol
        if protocol is None:
            return
        if len(data) <= TURN_BYTES and not self._held:
            try:
                protocol.dataReceived(data)
            except Exception:
                self._fail(Failure())
            return
        # Too much for one turn: hold it, stop reading, and hand it on a
        # slice a turn (the first now), so other connections are served between.
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
        """Hand on the next held slice and schedule the one after (or read again); nothing while paused."""
        self._slice_due = False
        if self._protocol is None or self.disconnecting:
            self._held = b""  # as Twisted's transports stop reading on loseConnection
            return
        if self._reading_paused:
            return
        if not self._held:
            self.resumeProducing()
            return
        held, start = self._held, self._held_from
        end = start + TURN_BYTES
        if end < len(held):
            self._held_from = end
            self._deliver(held[start:end])
        else:
            self._held, self._held_from = b"", 0
            self._deliver(held[start:] if start else held)
        # The next slice (or reading again) on the next turn, not this one.
        self._slice_due = True
        self._listening.loop.call_soon(self._next_slice)

    def eof_received(self) -> bool:
        """The peer's end: ``readConnectionLost`` for a half-closeable protocol, which then closes itself."""
        self._read_eof = True
        if self._held:
            # Every byte before the end, whatever a loop does.
            held, self._held = self._held[self._held_from :], b""
            self._deliver(held)
        protocol = self._protocol
        half: Any = protocol if _half_closeable(protocol) else IHalfCloseableProtocol(protocol, None)
        if half is None:
            return False  # the loop closes the connection
        try:
            half.readConnectionLost()
        except Exception:
            self._fail(Failure())
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the producer and tell the protocol, with Twisted's reason (or its own error)."""
        self.connected = self._write_open = False
        self._held = b""
        producer, self._producer = self._producer, None
        protocol, self._protocol = self._protocol, None
        if producer is not None:
            producer.stopProducing()
        if protocol is None:
            return
        self._listening.open.discard(self)
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
        """The write buffer passed its high-water mark: pause a streaming producer."""
        self._paused = True
        producer = self._producer
        if producer is not None and self._streaming:
            producer.pauseProducing()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        """The write buffer drained to its low-water mark: resume the producer."""
        self._paused = False
        producer = self._producer
        if producer is None:
            return
        if self._streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]
        else:
            self._pull()

    def _fail(self, failure: Failure) -> None:
        """The protocol raised: log it and drop the connection with it as the reason, as Twisted does."""
        _log.failure("Unhandled error in protocol for {peer}", failure, peer=self._peer)
        if self._error is None:
            self._error = failure
        self._aborted = self.disconnecting = True
        self._write_open = False
        if self._transport is not None:
            self._transport.abort()

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` (ignored once the write side is closed, as in Twisted)."""
        if self._tls is None:
            if self._write_open:
                self._transport.write(data)
        elif self.connected:
            self._tls.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Send each of ``data`` in order."""
        if self._tls is None:
            self._raw_write_sequence(data)
        elif self.connected:
            self._tls.writeSequence(data)

    def _raw_write(self, data: bytes) -> None:
        if self._write_open:
            self._transport.write(data)

    def _raw_write_sequence(self, data: Iterable[bytes]) -> None:
        if self._write_open:
            self._transport.writelines(data)

    def loseConnection(self) -> None:
        """Close once all is sent and (as Twisted) a pull or paused producer is unregistered."""
        if self._tls is None:
            self._lose()
        elif self.connected and not self.disconnecting:
            self._tls.loseConnection()

    def _lose(self) -> None:
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        if self._producer is not None and (not self._streaming or self._paused):
            # Twisted waits for the producer: unregisterProducer closes.
            self.pauseProducing()
            return
        self._close()

    def _close(self) -> None:
        transport = self._transport
        # The sending side first (as Twisted's TCP transport), so a peer whose
        # last bytes were never read sees the end of the stream before a
        # reset; after the peer's end nothing is unread and close() says it.
        if self._write_open and not self._read_eof and transport.can_write_eof():
            self._write_open = False
            transport.write_eof()
        transport.close()

    def abortConnection(self) -> None:
        """Close at once, dropping whatever is buffered."""
        if self.connected and not self._aborted:
            self._aborted = self.disconnecting = True
            self._write_open = False
            self._transport.abort()

    def loseWriteConnection(self) -> None:
        """Half-close once all is sent; a half-closeable protocol hears ``writeConnectionLost``."""
        if not self._write_open:
            return
        transport = self._transport
        if not transport.can_write_eof():
            self.loseConnection()
            return
        self._write_open = False
        transport.write_eof()
        half = _half_close(self._protocol)
        if half is not None:
            self._listening.loop.call_soon(self._write_lost, half)

    def _write_lost(self, half: IHalfCloseableProtocol) -> None:
        if self.connected:
            try:
                half.writeConnectionLost()
            except Exception:
                self._fail(Failure())

    # -- IConsumer -------------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """A streaming producer is paused while the buffer is over `bufferSize`; a pull one asked while under."""
        if self._tls is not None:
            self._tls.registerProducer(producer, streaming)
        else:
            self._raw_register(producer, streaming)

    def _raw_register(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because {self._producer!r} is registered")
        if not self.connected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self._pull()
        elif self._paused:
            producer.pauseProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        """Forget the producer (and close, if `loseConnection` was waiting for it)."""
        if self._tls is not None:  # checked at each call, as Twisted's transport does: a saved method follows TLS
            self._tls.unregisterProducer()
            return
        self._producer = None  # `_raw_unregister`, inline: every connection comes here
        if self.disconnecting and self.connected and not self._aborted and not self._transport.is_closing():
            self._close()

    def _raw_unregister(self) -> None:
        self._producer = None
        if self.disconnecting and self.connected and not self._aborted and not self._transport.is_closing():
            self._close()

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
        """Stop reading from the peer (and handing on bytes already read)."""
        self._reading_paused = True
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()

    def resumeProducing(self) -> None:
        """Read from the peer again, once the bytes already read are handed on."""
        self._reading_paused = False
        if self._held:
            if not self._slice_due:
                self._slice_due = True
                self._listening.loop.call_soon(self._next_slice)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    def stopProducing(self) -> None:
        """Close the connection."""
        self.loseConnection()
