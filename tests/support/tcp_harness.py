"""An in-memory harness for `capserv.protocols.tcp` and the modules it builds on: StringTransport and Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from capserv import CapservConfig, UppercaseFactory, UppercaseProtocol


def peer(host: str = "192.0.2.1", port: int = 40000) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class AbortableTransport(StringTransport):
    """A StringTransport that also records abortConnection."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


class Harness:
    """One factory, one clock, and helpers to connect in memory."""

    def __init__(self, **config: object) -> None:
        self.clock = Clock()
        self.factory = UppercaseFactory(CapservConfig(**config), clock=self.clock)  # type: ignore[arg-type]

    def connect(self, host: str = "192.0.2.1", port: int = 40000) -> tuple[UppercaseProtocol, AbortableTransport]:
        address = peer(host, port)
        protocol = self.factory.buildProtocol(address)
        transport = AbortableTransport(peerAddress=address)
        protocol.makeConnection(transport)  # type: ignore[union-attr]
        return protocol, transport  # type: ignore[return-value]

    def lose(self, protocol: object) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
