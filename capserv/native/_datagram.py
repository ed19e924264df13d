"""
Datagrams: `listen_datagrams` serves a Twisted ``DatagramProtocol`` through
the event loop's datagram transport, with `NativeDatagramPort` as its
``IUDPTransport``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, InvalidAddressError
from twisted.internet.interfaces import IListeningPort, ISystemHandle, IUDPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv.native._common import _log, address, asyncio_loop

__all__ = ["NativeDatagramPort", "listen_datagrams"]


@implementer(IListeningPort, IUDPTransport, ISystemHandle)
class NativeDatagramPort(asyncio.DatagramProtocol):
    """
    A UDP socket served by the event loop's datagram transport for a Twisted
    ``DatagramProtocol``: its ``IUDPTransport`` and listening port in one.

    ``write`` raises `OSError` (``ENOBUFS``) once ``write_limit`` bytes wait,
    as Twisted's port raises when the socket is full, so replies are dropped,
    not piled up.  A send failing later goes to ``send_error`` (or the log),
    or, connected, a refused one to the protocol's ``connectionRefused``.
    """

    #: The largest datagram read whole: the event loops read up to 64 KiB.
    maxPacketSize = 65535
    #: Bytes of replies that may wait to be sent before ``write`` refuses.
    write_limit = 262144

    def __init__(
        self,
        protocol: Any,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        send_error: Callable[[Exception], object] | None = None,
    ) -> None:
        self._protocol = protocol
        self._send_error = send_error
        self._family = sock.family
        self._host = sock.getsockname()
        self._transport: Any = None
        self._connected: tuple[str, int] | None = None
        self._sock = sock  # shared with the transport: empty datagrams, socket options
        self._stopped = False
        # The transport comes on the loop's next turn (datagrams wait in the bound socket).
        task = asyncio.ensure_future(loop.create_datagram_endpoint(lambda: self, sock=sock), loop=loop)
        task.add_done_callback(self._made)

    def _made(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            _log.failure("Cannot serve datagrams on {address}", Failure(error), address=self.getHost())

    # -- asyncio.DatagramProtocol ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The event loop's datagram transport is ready: start the protocol."""
        self._transport = transport
        if self._stopped:
            transport.close()
            return
        self._protocol.makeConnection(self)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """A datagram arrived: the protocol's ``datagramReceived``."""
        try:
            self._protocol.datagramReceived(data, addr)
        except Exception:
            _log.failure("Unhandled error in datagram protocol {protocol!r}", protocol=self._protocol)

    def error_received(self, exc: Exception) -> None:
        """
        A send failed after it was queued (or, connected, the peer refused):
        ``connectionRefused``, ``send_error``, or a log line.
        """
        if self._connected is not None and isinstance(exc, ConnectionRefusedError):
            self._protocol.connectionRefused()
        elif self._send_error is not None:
            self._send_error(exc)
        else:
            _log.warn("Datagram error on {address}: {error}", address=self.getHost(), error=exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The datagram transport is closed."""
        self._transport = None

    # -- IUDPTransport -----------------------------------------------------

    def write(self, packet: bytes, addr: Any = None) -> None:
        """Send ``packet`` to ``addr`` (or the connected address); `OSError` ``ENOBUFS`` when replies pile up."""
        transport = self._transport
        if transport is None:
            raise OSError(errno.ENOTCONN, "datagram port is not serving")
        if self._connected is not None:
            assert addr in (None, self._connected)
            addr = self._connected
        if not packet:
            # The event loops' sendto drops an empty datagram; Twisted sends
            # it, and an empty request gets an empty reply.
            self._sock.sendto(packet, addr)
            return
        if transport.get_write_buffer_size() > self.write_limit:
            raise OSError(errno.ENOBUFS, "too many datagrams waiting to be sent")
        transport.sendto(packet, addr)

    def connect(self, host: str, port: int) -> None:
        """Talk to one peer only, as Twisted's UDP port does (``host`` an IP address; once)."""
        if self._connected is not None:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        if not isIPAddress(host) and not isIPv6Address(host):
            raise InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        self._sock.connect((host, port))
        self._connected = (host, port)

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        :return: the address listened on.
        """
        return address(self._family, self._host, "UDP")  # type: ignore[return-value]

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """
        :param enabled: whether datagrams may go to broadcast addresses.
        """
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(enabled))

    def getBroadcastAllowed(self) -> bool:
        """
        :return: whether datagrams may go to broadcast addresses.
        """
        return bool(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))

    def getHandle(self) -> socket.socket:
        """
        :return: the socket.
        """
        return self._sock

    def startListening(self) -> None:
        """Nothing to do: the port listens from the moment it is made."""

    def stopListening(self) -> Deferred[None]:
        """Close the socket and tell the protocol (``doStop``); a fired `Deferred`."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._transport is not None:
            self._transport.close()
            self._protocol.doStop()
        # Else not serving yet: connection_made will close the transport.
        return succeed(None)

    loseConnection = stopListening


def listen_datagrams(
    reactor: Any,
    protocol: Any,
    make_socket: Callable[[], socket.socket],
    send_error: Callable[[Exception], object] | None = None,
) -> NativeDatagramPort:
    """
    Serve a bound UDP socket with the event loop's datagram transport (see
    `native_datagrams_supported`); the protocol starts on the loop's next turn.

    :param make_socket: returns the bound socket, or raises `OSError`.
    :param send_error: called with each send error reported after ``write``
        returned; logged if `None`.
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
    return NativeDatagramPort(protocol, sock, loop, send_error)
