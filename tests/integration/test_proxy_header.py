"""
A ``haproxy:`` listener on loopback refuses a client without a valid PROXY
header: nothing served, counted as ``proxy_header``, one refusal line naming
it and no access line, on whichever reactor the run uses.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from capserv import UppercaseFactory
from capserv.protocols._twisted import proxy_protocol_factory

from ..support.loopback import in_thread, read_all

#: How each listener is made: Twisted's ``haproxy:`` description, and the
#: half-closeable wrapper capserv's daemon puts on ``haproxy:`` listeners.
LISTENERS: dict[str, Callable[[Any, UppercaseFactory], Any]] = {
    "haproxy:tcp": lambda r, f: serverFromString(r, "haproxy:tcp:0:interface=127.0.0.1").listen(f),
    "daemon's wrapper": lambda r, f: TCP4ServerEndpoint(r, 0, interface="127.0.0.1").listen(proxy_protocol_factory(f)),
}

#: What each client sends before ending its input, and the refusal it gets.
CLIENTS = {
    "garbage header": (b"PROXY garbage, not a header\r\nhello\n", "bad PROXY header"),
    "plain text": (b"hello, no header\n", "bad PROXY header"),
    "nothing": (b"", "no PROXY header before end of input"),
}


def _send_and_end(port: int, payload: bytes) -> bytes:
    """Send ``payload``, end the input, read to the end."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    with raw:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        return read_all(raw)


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("listener", list(LISTENERS))
@pytest_twisted.inlineCallbacks
def test_missing_or_bad_proxy_header_refused(listener: str, client: str) -> Any:
    """
    A client whose first bytes are not a PROXY header (garbage, plain text,
    or nothing before it ends its input) gets no reply; the factory counts a
    proxy_header refusal, serves nothing, and logs the refusal by name with no
    access line.
    """
    from twisted.internet import reactor

    payload, expected = CLIENTS[client]
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    factory = UppercaseFactory(clock=reactor)
    port = yield LISTENERS[listener](reactor, factory)
    try:
        reply = yield in_thread(_send_and_end, port.getHost().port, payload)
        for _ in range(200):  # the server's side closes in the same turn as the socket; bounded anyway
            if not factory.connections:
                break
            yield deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield port.stopListening()
        yield factory.drain(timeout=5)
    assert reply == b""
    snapshot = factory.snapshot()
    assert snapshot["connections_refused"] == {"proxy_header": 1}
    assert (snapshot["connections_total"], snapshot["connections_active"]) == (0, 0)
    assert [e for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseProtocol"] == []
    (line,) = [formatEvent(e) for e in events if e.get("log_namespace") == "capserv.tcp.UppercaseFactory"]
    assert line.startswith("Refused connection from 127.0.0.1:")
    assert f": {expected} (" in line
