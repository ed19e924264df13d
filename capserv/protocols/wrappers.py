"""
The half-close contract behind Twisted's wrapper factories: a
``ProtocolWrapper`` (``TimeoutFactory``, ``ThrottlingFactory``, ``haproxy:``,
TLS) is not ``IHalfCloseableProtocol``, so at a client's end of input Twisted
would close the whole connection and drop the reply still owed; TLS does
the same at the peer's close_notify.
"""

from __future__ import annotations

import sys

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import alsoProvides

from capserv.protocols._twisted import tls_half_close

__all__ = ["lend_half_close"]


def _lend_to_tls(tls: ProtocolWrapper, inner: IHalfCloseableProtocol) -> None:
    """
    The peer's close_notify or its TCP FIN ends the input, once; after a FIN no
    close_notify can come, so once TLS has sent ours (after the reply: the caller
    has unregistered its producer) close TCP beneath rather than wait for ever.
    """
    ended = fin = False

    def end_of_input() -> None:
        nonlocal ended
        if not ended:
            ended = True
            inner.readConnectionLost()

    def read_lost() -> None:
        nonlocal fin
        fin = True
        end_of_input()

    def close_tcp() -> None:
        if fin and tls.transport is not None:
            tls.transport.loseConnection()

    def lose() -> None:
        type(tls).loseConnection(tls)
        close_tcp()

    tls.readConnectionLost = read_lost  # type: ignore[attr-defined]
    if not tls_half_close(tls, end_of_input, close_tcp):
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
