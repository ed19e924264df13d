"""
Every place capserv reaches into Twisted's private attributes: each helper
checks they look as expected, else falls back to the public behaviour
(tested on the oldest and newest Twisted).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer


def global_reactor() -> Any:
    """The installed reactor (installing the default one if none is)."""
    from twisted.internet import reactor

    return reactor


def clear_exit_signal(reactor: Any) -> bool:
    """
    Forget the signal that stopped the reactor (``_exitSignal``), so twistd
    exits 0 after a graceful stop instead of killing itself by it; tell whether there was one.
    """
    if isinstance(getattr(reactor, "_exitSignal", None), int):
        reactor._exitSignal = None
        return True
    return False


def record_exit_signal(reactor: Any, signum: int) -> None:
    """Record ``signum`` as the signal that stopped the reactor: a forced stop ends twistd by it."""
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = signum


def sole_observer(publisher: Any) -> object | None:
    """
    The one observer a ``LogPublisher`` forwards every event to (its
    ``_observers``), or `None` if it has several, none, or no such list.
    """
    observers = getattr(publisher, "_observers", None)
    return observers[0] if type(observers) is list and len(observers) == 1 else None


def unsent_bytes(transport: Any) -> int | None:
    """
    Bytes written to a stream transport and not yet sent (native's
    ``write_buffer_size``, Twisted TCP's buffers), or `None` if it cannot tell.
    """
    size = getattr(transport, "write_buffer_size", None)
    if isinstance(size, int):
        return size
    tcp = sys.modules.get("twisted.internet.tcp")  # not imported: no transport is one of its
    if tcp is None or not isinstance(transport, tcp.Connection):
        return None
    try:
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
    except (AttributeError, TypeError):
        return None


def stream_writer(transport: Any, fast: bool = True) -> Any:
    """
    A ``write(data)`` for a TCP or UNIX transport sending at once when nothing
    waits (``write`` buffers until the next loop turn, twisted#5303), the rest
    through ``write``; other transports, or ``fast=False``, get ``write`` itself.
    """
    tcp = sys.modules.get("twisted.internet.tcp")
    if not fast or tcp is None or not isinstance(transport, tcp.Connection):
        return transport.write
    needed = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "connected", "_writeDisconnected", "disconnecting")
    if not all(hasattr(transport, name) for name in needed):
        return transport.write
    write: Callable[[bytes], None] = transport.write
    send: Callable[[bytes], int] = transport.socket.send

    def write_now(data: bytes) -> None:
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) != transport.offset
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or an error that the normal path will report.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return write_now


def datagram_sender(transport: Any, fast: bool = True) -> Any:
    """
    A ``send(data, addr)`` for a UDP port: ``sendto``, skipping ``write``'s
    re-parse of the address ``recvfrom`` gave; else, or ``fast=False``, ``write``.
    """
    from twisted.internet import udp

    if (
        not fast
        or not isinstance(transport, udp.Port)
        or not hasattr(transport, "socket")
        or getattr(transport, "_connectedAddr", True)
    ):
        return transport.write
    return transport.socket.sendto


def reset_unnoticed(transport: Any) -> bool:
    """
    Whether the socket under a transport (through TLS or PROXY wrappers)
    holds an error its reactor was never told of, clearing it (uvloop drops
    a reset that arrives while a Twisted transport waits to read).
    """
    for _ in range(4):
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket):
            try:
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
            except OSError:  # closed meanwhile: Twisted knows
                return False
        transport = getattr(transport, "transport", None)
    return False


def tls_half_close(tls: Any, end_of_input: Callable[[], object], notified: Callable[[], object]) -> bool:
    """
    Make a ``TLSMemoryBIOProtocol`` take the peer's close_notify as the end of
    its input (``end_of_input()``, once, after the data before it) and keep
    the connection for the reply: Twisted answers it at once, so a reply owed is
    dropped. ``notified()`` runs each time TLS has sent this side's close_notify.
    `False`, changing nothing, if its internals differ.
    """
    from OpenSSL import SSL

    connection = getattr(tls, "_tlsConnection", None)
    flush, shutdown = getattr(tls, "_flushReceiveBIO", None), getattr(tls, "_shutdownTLS", None)
    if not isinstance(connection, SSL.Connection) or not callable(flush) or not callable(shutdown):
        return False
    recv = connection.recv
    seen = told = False

    def recv_until_notify(*args: Any) -> bytes:
        nonlocal seen
        try:
            return recv(*args)
        except SSL.ZeroReturnError:
            if connection.get_shutdown() & SSL.SENT_SHUTDOWN:
                raise  # the answer to this side's close_notify: Twisted closes, as it should
            seen = True
            raise SSL.WantReadError() from None  # ends Twisted's read loop, the connection kept

    def flush_then_end() -> None:
        nonlocal told
        flush()
        if seen and not told:
            told = True
            end_of_input()

    def shutdown_then_tell() -> None:
        shutdown()
        notified()

    connection.recv = recv_until_notify  # type: ignore[method-assign, assignment]
    tls._flushReceiveBIO = flush_then_end
    tls._shutdownTLS = shutdown_then_tell
    return True


def is_proxy_protocol(transport: Any) -> bool:
    """Whether a connection comes through Twisted's PROXY-protocol wrapper."""
    return hasattr(transport, "_proxyInfo") and hasattr(transport, "wrappedProtocol")


def proxy_header_read(transport: Any) -> bool:
    """Whether Twisted's PROXY-protocol wrapper has read a whole, valid header."""
    return getattr(transport, "_proxyInfo", None) is not None


def proxy_protocol_factory(factory: Any) -> Any:
    """The factory ``proxyEndpoint`` would wrap ``factory`` in (``haproxy:``), made quiet."""
    from twisted.protocols.haproxy import proxyEndpoint

    captured: list[Any] = []

    @implementer(IStreamServerEndpoint)
    class _Capture:
        def listen(self, wrapping: Any) -> Any:
            captured.append(wrapping)

    proxyEndpoint(_Capture()).listen(factory)
    captured[0].noisy = False
    return captured[0]


def endpoint_service(endpoint: Any, factory: Any) -> Any:
    """A ``StreamServerEndpointService`` raising a listen failure from ``privilegedStartService``, as strports'."""
    from twisted.application.internet import StreamServerEndpointService

    service = StreamServerEndpointService(endpoint, factory)
    if hasattr(service, "_raiseSynchronously"):
        service._raiseSynchronously = True
    return service


def systemd_descriptors() -> list[int]:
    """The sockets systemd passed (``LISTEN_FDS``) as Twisted read them at import (it clears the environment)."""
    return list(_listen_fds().inheritedDescriptors())


def systemd_names() -> list[str]:
    """The names systemd gave them (``FileDescriptorName=``), in the same order."""
    passed = _listen_fds()
    named: dict[str, int] = getattr(passed, "inheritedNamedDescriptors", dict)()
    by_descriptor = {descriptor: name for name, descriptor in named.items()}
    return [by_descriptor.get(descriptor, "") for descriptor in passed.inheritedDescriptors()]


def _listen_fds() -> Any:
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    parsed = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if isinstance(parsed, ListenFDs) and parsed.inheritedDescriptors():
        return parsed
    return ListenFDs.fromEnvironment()
