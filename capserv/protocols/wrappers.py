"""
The half-close contract behind Twisted's wrapper factories: a
``ProtocolWrapper`` (``TimeoutFactory``, ``ThrottlingFactory``, ``haproxy:``,
TLS) is not ``IHalfCloseableProtocol``, so at a client's end of input Twisted
would close the whole connection and drop the reply still owed.
"""

from __future__ import annotations

import sys

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import alsoProvides

__all__ = ["lend_half_close"]


def _lend_to_tls(tls: ProtocolWrapper, inner: IHalfCloseableProtocol) -> None:
    """
    After the peer's TCP FIN no close_notify can come, so closing sends ours and
    closes TCP beneath rather than wait for ever (the caller has unregistered
    its producer, so TLS has passed every byte down).
    """
    ended = False

    def read_lost() -> None:
        nonlocal ended
        ended = True
        inner.readConnectionLost()

    def lose() -> None:
        type(tls).loseConnection(tls)
        if ended and tls.transport is not None:
            tls.transport.loseConnection()

    tls.readConnectionLost = read_lost  # type: ignore[attr-defined]
    tls.loseConnection = lose  # type: ignore[method-assign]


def lend_half_close(protocol: Protocol) -> None:
    """
    Let every ``ProtocolWrapper`` between ``protocol`` and the transport pass
    ``readConnectionLost`` and ``writeConnectionLost`` on, for this connection
    only; call it from ``connectionMade``.  Half-closeable wrappers are left alone.
    """
    inner: object = protocol
    transport = protocol.transport
    # By sys.modules: without the TLS extra, importing it would fail for every connection.
    tls = sys.modules.get("twisted.protocols.tls")
    while isinstance(transport, ProtocolWrapper) and transport.wrappedProtocol is inner:
        if not IHalfCloseableProtocol.providedBy(transport):
            alsoProvides(transport, IHalfCloseableProtocol)
            transport.readConnectionLost = inner.readConnectionLost
            transport.writeConnectionLost = inner.writeConnectionLost
            if tls is not None and isinstance(transport, tls.TLSMemoryBIOProtocol):
                _lend_to_tls(transport, inner)
        inner, transport = transport, transport.transport
