"""
Tests for `capserv.protocols.tcp` over real loopback connections: the access line's reason, in capserv's words
(docs/operations.rst), not Twisted's exception text.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, globalLogPublisher

from capserv import UppercaseFactory

from ..support.loopback import in_thread, read_all


def _reset(port: int) -> None:
    """Send a line, then reset the connection (SO_LINGER 0) without ending the input."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    raw.sendall(b"hello\n")
    assert raw.recv(6) == b"HELLO\n"
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def _plain_text(port: int) -> None:
    """Send plain text to a TLS port, end the input, read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        raw.sendall(b"hello, no TLS here\n")
        raw.shutdown(socket.SHUT_WR)
        read_all(raw)


@pytest_twisted.inlineCallbacks
def _reason_of(description: str, client: Callable[[int], None]) -> Any:
    """Listen on ``description``, run ``client`` against it, return the access line's reason."""
    from twisted.internet import reactor

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    factory = UppercaseFactory(clock=reactor)
    port = yield serverFromString(reactor, description).listen(factory)
    try:
        yield in_thread(client, port.getHost().port)
        for _ in range(200):  # bounded: the line comes as the server's side closes
            lines = [e for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"]
            if lines:
                break
            yield deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield port.stopListening()
        yield factory.drain(timeout=5)
    (line,) = lines
    return line["reason"]


@pytest_twisted.inlineCallbacks
def test_reset_by_peer() -> Any:
    """A client that resets its connection is logged as "reset by peer"."""
    reason = yield _reason_of("tcp:0:interface=127.0.0.1", _reset)
    assert reason == "reset by peer"


@pytest_twisted.inlineCallbacks
def test_tls_error(tmp_path: Path) -> Any:
    """Plain text on a TLS port is logged as "TLS error: " and OpenSSL's reason."""
    import trustme

    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    reason = yield _reason_of(f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}", _plain_text)
    assert reason.startswith("TLS error: ") and "Error" not in reason, reason
