"""
What a `NativeTransport` offers besides reading and writing, as Twisted's
``tcp.Server`` does: its socket and socket options, ``logPrefix``,
``reactor``, the write buffer's size and limit, the TLS peer's certificate.
"""

from __future__ import annotations

from socket import AF_UNIX, IPPROTO_TCP, SO_KEEPALIVE, SOL_SOCKET, TCP_NODELAY
from typing import Any

from twisted.internet.interfaces import ILoggingContext


class _SocketMixin:
    """
    `NativeTransport`'s socket-side methods; they read the connection's
    ``_transport`` (the event loop's), ``_listening``, ``_protocol``,
    ``_peer``, ``_session`` and ``_tls``.
    """

    __slots__ = ()
    _transport: Any
    _listening: Any
    _protocol: Any
    _peer: Any
    _session: int
    _tls: Any

    def logPrefix(self) -> str:
        """
        :return: ``"ProtocolPrefix,sessionno,host"``, as Twisted's
            ``tcp.Server`` says.
        """
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
        """
        :return: the connection's socket (a stand-in object on uvloop), or
            the TLS connection once `startTLS` was called.
        """
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

    def getPeerCertificate(self) -> Any:
        """
        :return: the peer's certificate once `startTLS` was called (else
            `None`).
        """
        return None if self._tls is None else self._tls.getPeerCertificate()
