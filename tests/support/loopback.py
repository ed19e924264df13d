"""
Helpers for tests on real loopback sockets: listen on port 0, talk with
blocking sockets in a thread, clean up both ends.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from twisted.internet import defer, threads
from twisted.internet.interfaces import IListeningPort

from capserv import MAX_DATAGRAM, CapservConfig, UppercaseDatagramProtocol, UppercaseFactory
from capserv.native import NativeSocketEndpoint, listen_datagrams, native_datagrams_supported, native_supported


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


#: The loopback addresses the round-trip tests run on, ::1 where it exists.
HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback"))]


def listening_socket(host: str) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on ``host``, port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@defer.inlineCallbacks
def listen_tcp(host: str, config: CapservConfig | None = None) -> Any:
    """
    Listen on ``host``, port 0, with a new `UppercaseFactory`: through the
    event loop's own transports (`capserv.native`) when the reactor can,
    so the asyncio reactor's runs test that path (``CAPSERV_NATIVE=0``
    tests Twisted's transports there), else with ``listenTCP``.
    """
    from twisted.internet import reactor

    factory = UppercaseFactory(config, clock=reactor)
    if os.environ.get("CAPSERV_NATIVE") != "0" and native_supported(reactor):
        port = yield NativeSocketEndpoint(reactor, lambda: listening_socket(host)).listen(factory)
    else:
        port = reactor.listenTCP(0, factory, interface=host)
    return factory, port


def listen_udp(host: str, config: CapservConfig | None = None) -> tuple[UppercaseDatagramProtocol, IListeningPort]:
    from twisted.internet import reactor

    proto = UppercaseDatagramProtocol(config, clock=reactor)
    if os.environ.get("CAPSERV_NATIVE_UDP") == "1" and native_datagrams_supported(reactor):
        # The event loop's datagram transport (CAPSERV_NATIVE_UDP=1 with
        # CAPSERV_TEST_LOOP=uvloop).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def bound() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            return sock

        return proto, listen_datagrams(reactor, proto, bound, send_error=proto.send_error)
    port = reactor.listenUDP(0, proto, interface=host, maxPacketSize=MAX_DATAGRAM)
    return proto, port


@defer.inlineCallbacks
def stop_tcp(factory: UppercaseFactory, port: IListeningPort) -> Any:
    """Stop listening and wait until every server connection is gone."""
    yield port.stopListening()
    yield factory.drain(timeout=0)


def tcp_exchange(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """A blocking client: send, half-close, read to the end (run in a thread)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    """Read until the other end closes."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def udp_exchange(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        reply, _ = s.recvfrom(MAX_DATAGRAM)
        return reply


def in_thread(f: Any, *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(f, *args)
