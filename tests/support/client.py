"""
Helpers for the client's tests: ``capserv-client`` run as a subprocess, and
servers that lose datagrams or never answer, on loopback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from .daemon import script_path
from .loopback import have_ipv6


def client_path() -> str:
    return script_path("capserv-client")


def run_client(
    args: list[str], stdin: bytes = b"", timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([client_path(), *args], input=stdin, capture_output=True, timeout=timeout, env=env)


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The exit status is ``code`` and stderr is one line in capserv-client's
    words, with nothing on stdout; returns that line."""
    assert result.returncode == code, result
    assert result.stdout == b""
    assert result.stderr.startswith(b"capserv-client: ") and result.stderr.count(b"\n") == 1, result.stderr
    assert b"Traceback" not in result.stderr and b"Parameter type enforcement" not in result.stderr
    return result.stderr.decode()


def sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def tls_server(tmp_path: Path) -> tuple[Any, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    roots = tmp_path / "roots"
    roots.mkdir()
    ca.cert_pem.write_to_path(str(roots / "ca.pem"))
    return pem, roots


class LossyServer(DatagramProtocol):
    """Drops the first ``drop`` datagrams; delays the reply to datagram
    number ``delay_index`` by ``delay`` seconds; answers the rest at once."""

    noisy = False

    def __init__(self, drop: int = 0, delay_index: int = -1, delay: float = 0.0) -> None:
        self.drop = drop
        self.delay_index = delay_index
        self.delay = delay
        self.seen: list[bytes] = []
        self.pending: list[Any] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        from twisted.internet import reactor

        index = len(self.seen)
        self.seen.append(data)
        if index < self.drop:
            return
        reply = data.upper()
        if index == self.delay_index:
            self.pending.append(reactor.callLater(self.delay, self.transport.write, reply, addr))
        else:
            self.transport.write(reply, addr)

    def cleanup(self) -> None:
        for call in self.pending:
            if call.active():
                call.cancel()


def listen_lossy(server: LossyServer) -> Any:
    from twisted.internet import reactor

    return reactor.listenUDP(0, server, interface="127.0.0.1")


@implementer(IHalfCloseableProtocol)
class Silent(Protocol):
    """A server connection that reads and never answers, not even at the
    end of input, and says when it closes."""

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass

    def connectionMade(self) -> None:
        self.factory.opened.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed.append(self)  # type: ignore[attr-defined]


def closed_all(factory: Any) -> bool:
    """Whether every connection of ``factory`` has closed.  A byte written to
    each one still open makes a connection the client closed end here: the
    server has seen the client's end of input already, so only a write
    finds out."""
    for protocol in factory.opened:
        if protocol not in factory.closed:
            protocol.transport.write(b"\0")
    return len(factory.closed) == len(factory.opened) > 0


def listen_silent() -> Any:
    """A TCP listener on 127.0.0.1 whose connections never answer."""
    from twisted.internet import reactor

    factory = Factory.forProtocol(Silent)
    factory.opened, factory.closed = [], []  # type: ignore[attr-defined]
    return factory, reactor.listenTCP(0, factory, interface="127.0.0.1")


@pytest_twisted.inlineCallbacks
def until(condition: Any, seconds: float = 10.0) -> Any:
    """Wait, polling, until ``condition()`` holds or ``seconds`` pass; return it."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            break
        yield sleep(0.01)
    return condition()


#: The largest UDP payload to each loopback address: 65,507 bytes over IPv4,
#: 65,527 over IPv6.
WHOLE = [
    pytest.param("127.0.0.1", 65507, id="ipv4-65507"),
    pytest.param("::1", 65527, id="ipv6-65527", marks=pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")),
]
