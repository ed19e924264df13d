"""
The half-close contract behind Twisted's own wrapper factories.

A client that sends its request and then ends its input gets the whole reply
back when capserv's factory is wrapped by ``TimeoutFactory``,
``ThrottlingFactory``, ``TLSMemoryBIOFactory``, ``proxyEndpoint`` or a
``haproxy:`` description, small and 2 MB, on whichever reactor the run uses;
and the access line counts the bytes that really left.  Under TLS the client
ends its input with a TCP half-close (no close_notify), as ``nc -N`` does; or
with close_notify then a TCP half-close, as ``socat`` does; or close_notify alone.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.protocols import policies
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory

from capserv import UppercaseFactory

from ..support.loopback import in_thread, read_all

PROXY_HEADER = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 50007\r\n"
SIZES = [14, 2_000_000]


def _tcp(reactor: Any) -> TCP4ServerEndpoint:
    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")


@functools.cache
def _ca() -> Any:
    return pytest.importorskip("trustme").CA()


def _tls(factory: IProtocolFactory) -> TLSMemoryBIOFactory:
    from twisted.internet.ssl import PrivateCertificate

    pem = _ca().issue_cert("localhost").private_key_and_cert_chain_pem.bytes()
    options = PrivateCertificate.loadPEM(pem).options()
    return TLSMemoryBIOFactory(options, False, factory)


#: Each wrapper: how it listens, and whether the client sends a PROXY header first.
WRAPPERS: dict[str, tuple[Callable[[Any, IProtocolFactory], Any], str]] = {
    "TimeoutFactory": (lambda r, f: _tcp(r).listen(policies.TimeoutFactory(f, 60)), ""),
    "ThrottlingFactory": (lambda r, f: _tcp(r).listen(policies.ThrottlingFactory(f)), ""),
    "TLSMemoryBIOFactory": (lambda r, f: _tcp(r).listen(_tls(f)), "tls"),
    "TimeoutFactory under TLS": (lambda r, f: _tcp(r).listen(_tls(policies.TimeoutFactory(f, 60))), "tls"),
    "proxyEndpoint": (lambda r, f: proxyEndpoint(_tcp(r)).listen(f), "proxy"),
    "haproxy:": (lambda r, f: serverFromString(r, "haproxy:tcp:0:interface=127.0.0.1").listen(f), "proxy"),
    "TimeoutFactory over haproxy:": (
        lambda r, f: serverFromString(r, "haproxy:tcp:0:interface=127.0.0.1").listen(policies.TimeoutFactory(f, 60)),
        "proxy",
    ),
}


def _exchange(port: int, payload: bytes, first: str) -> bytes:
    """Send (after a PROXY header if asked), half-close, read to the end."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    with raw:
        if first == "tls":
            return _tls_exchange(raw, payload)
        if first == "proxy":
            raw.sendall(PROXY_HEADER)
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        return read_all(raw)


def _tls_exchange(raw: socket.socket, payload: bytes) -> bytes:
    """
    Over TLS: send, half-close TCP beneath TLS, read to the server's
    close_notify, then see the server close TCP too (not wait for ours).
    """
    context = ssl.create_default_context()
    _ca().configure_trust(context)
    with context.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(payload)
        socket.socket.shutdown(s, socket.SHUT_WR)  # SSLSocket.shutdown would drop TLS
        reply = read_all(s)
        assert socket.socket.recv(s, 1) == b"", "the server closed TCP after its close_notify"
        return reply


def _notify_exchange(port: int, payload: bytes, fin: bool) -> bytes:
    """
    Over TLS: send, then close_notify (then a TCP half-close if ``fin``), read
    to the server's close_notify, then see the server close TCP.
    """
    context = ssl.create_default_context()
    _ca().configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "TCP closed during the handshake"
                incoming.write(data)
        tls.write(payload)
        # With no reply read yet, unwrap sends close_notify and discards nothing.
        with pytest.raises(ssl.SSLWantReadError):
            tls.unwrap()
        records = outgoing.read()

        def send() -> None:
            raw.sendall(records)
            if fin:
                raw.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        reply = bytearray()
        try:
            while True:
                try:
                    reply += tls.read(65536)
                except ssl.SSLWantReadError:
                    data = raw.recv(65536)
                    assert data, f"TCP closed before the server's close_notify, after {len(reply)} bytes"
                    incoming.write(data)
                except ssl.SSLZeroReturnError:
                    break
            assert raw.recv(1) == b"", "the server closed TCP after its close_notify"
        finally:
            sender.join()
        return bytes(reply)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fin", [True, False], ids=["close_notify then FIN", "close_notify alone"])
@pytest.mark.parametrize("wrapper", ["TLSMemoryBIOFactory", "TimeoutFactory under TLS"])
@pytest_twisted.inlineCallbacks
def test_whole_reply_after_close_notify(wrapper: str, fin: bool, size: int) -> Any:
    """
    A TLS client that ends its input with close_notify (and a TCP half-close,
    as ``socat`` does) gets its whole reply, then the server's close_notify,
    then the end of TCP; the access line's bytes out are the bytes it read.
    """
    from twisted.internet import reactor

    factory = UppercaseFactory(clock=reactor)
    port: IListeningPort = yield WRAPPERS[wrapper][0](reactor, factory)
    payload = ("hello, straße\n" * (size // 14 + 1)).encode()[:size]
    try:
        reply = yield in_thread(_notify_exchange, port.getHost().port, payload, fin)
    finally:
        yield port.stopListening()
        yield factory.drain(timeout=5)
    assert reply == payload.decode().upper().encode()
    assert factory.stats.bytes_out == len(reply)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest_twisted.inlineCallbacks
def test_whole_reply_behind_wrapper(wrapper: str, size: int) -> Any:
    """
    Behind each wrapper, a request ended by a half-close gets its whole reply,
    and the access line's bytes out are the bytes the client read.
    """
    from twisted.internet import reactor

    listen, first = WRAPPERS[wrapper]
    factory = UppercaseFactory(clock=reactor)
    port: IListeningPort = yield listen(reactor, factory)
    payload = ("hello, straße\n" * (size // 14 + 1)).encode()[:size]
    try:
        reply = yield in_thread(_exchange, port.getHost().port, payload, first)
    finally:
        yield port.stopListening()
        yield factory.drain(timeout=5)
    assert reply == payload.decode().upper().encode()
    assert factory.stats.bytes_out == len(reply)
