"""
What a `NativeTransport` offers besides reading and writing, as Twisted's
``tcp.Server`` does: addresses, its socket and socket options, ``logPrefix``,
``reactor``, the write buffer's size and limit, ``startTLS`` and the TLS
peer's certificate, and the drop at the reactor's shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from socket import AF_UNIX, IPPROTO_TCP, SHUT_RDWR, SO_KEEPALIVE, SOL_SOCKET, TCP_NODELAY, fromfd
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, ILoggingContext
from twisted.python.failure import Failure

from capserv.native._common import address


class _SocketMixin:
    """`NativeTransport`'s socket-side methods, on its own attributes."""

    __slots__ = ("_error", "_listening", "_peer", "_protocol", "_session", "_tls", "_transport", "_write_open")
    _transport: Any
    _listening: Any
    _protocol: Any
    _peer: Any
    _session: int
    _tls: Any
    _error: Failure | None
    _write_open: bool
    connection_lost: Callable[[Exception | None], None]

    def _shut_down(self) -> None:
        """The reactor is stopping: drop the connection and tell the protocol now, with `ConnectionLost`."""
        self._error = Failure(ConnectionLost())
        self._write_open = False
        handle = self._transport.get_extra_info("socket")
        if handle is not None:
            # The loop closes an aborted socket on its next turn, which a
            # stopping reactor may not take: shut it down now, through a
            # duplicate (the loops' socket objects refuse shutdown()).
            try:
                with fromfd(handle.fileno(), handle.family, handle.type) as duplicate:
                    duplicate.shutdown(SHUT_RDWR)
            except OSError:
                pass
        self._transport.abort()
        self.connection_lost(None)

    def getPeer(self) -> IAddress:
        """:return: the peer's address (`IPv4Address`, `IPv6Address` or `UNIXAddress`)."""
        peer = self._peer
        assert peer is not None
        if isinstance(peer, UNIXAddress) and not peer.name:
            return UNIXAddress(None)  # as Twisted's UNIX transport says
        return peer  # type: ignore[no-any-return]

    def getHost(self) -> IAddress:
        """:return: this side's address."""
        return address(self._listening.family, self._transport.get_extra_info("sockname"))

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:  # noqa: N803 (the interface's name)
        """Go on over TLS, as Twisted's TCP transport does; ``normal``: `True` for TLS's server side."""
        from capserv.native._tls import start_tls

        start_tls(self, contextFactory, normal)  # type: ignore[arg-type]

    def logPrefix(self) -> str:
        """:return: ``"ProtocolPrefix,sessionno,host"``, as Twisted's ``tcp.Server`` says."""
        context = ILoggingContext(self._protocol, None)
        prefix = context.logPrefix() if context is not None else type(self._protocol).__name__
        host = getattr(self._peer, "host", None) or getattr(self._peer, "name", "")
        return f"{prefix},{self._session},{host}"

    @property
    def reactor(self) -> Any:
        """The reactor whose event loop serves the connection."""
        return self._listening.reactor

    @property
    def socket(self) -> Any:
        """The connection's socket (a stand-in object on uvloop)."""
        return self._transport.get_extra_info("socket")

    def getHandle(self) -> Any:
        """:return: the socket (a stand-in on uvloop), or the TLS connection after `startTLS`."""
        if self._tls is not None:
            return self._tls.getHandle()
        return self._transport.get_extra_info("socket")

    def _socket_option(self, level: int, option: int, value: bool | None) -> bool:
        sock = self._transport.get_extra_info("socket")
        if sock is None or self._listening.family == AF_UNIX:
            return False
        if value is not None:
            sock.setsockopt(level, option, int(value))
        return bool(sock.getsockopt(level, option))

    def getTcpNoDelay(self) -> bool:
        """:return: whether Nagle's algorithm is off (the event loop turns it off)."""
        return self._socket_option(IPPROTO_TCP, TCP_NODELAY, None)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """:param enabled: turn Nagle's algorithm off (`True`) or on."""
        self._socket_option(IPPROTO_TCP, TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        """:return: whether TCP keepalives are on."""
        return self._socket_option(SOL_SOCKET, SO_KEEPALIVE, None)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """:param enabled: turn TCP keepalives on or off."""
        self._socket_option(SOL_SOCKET, SO_KEEPALIVE, enabled)

    @property
    def write_buffer_size(self) -> int:
        """How many written bytes are not yet sent."""
        if self._transport is None:
            return 0
        size: int = self._transport.get_write_buffer_size()
        return size

    @property
    def bufferSize(self) -> int:
        """The write buffer's high-water mark, past which the producer is paused (the loop transport's)."""
        high: int = self._transport.get_write_buffer_limits()[1]
        return high

    @bufferSize.setter
    def bufferSize(self, value: int) -> None:
        self._transport.set_write_buffer_limits(high=value)

    def getPeerCertificate(self) -> Any:
        """:return: the peer's certificate after `startTLS` (else `None`)."""
        return None if self._tls is None else self._tls.getPeerCertificate()
