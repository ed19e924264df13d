"""
The half-close contract behind Twisted's wrapper factories.

``TimeoutFactory``, ``ThrottlingFactory``, ``proxyEndpoint`` and
``haproxy:`` descriptions put a ``ProtocolWrapper`` between the transport and
capserv's protocol.  A ``ProtocolWrapper`` does not provide
``IHalfCloseableProtocol``, so when a client ends its input Twisted closes the
whole connection and drops the reply still buffered.  `lend_half_close` makes
each wrapper on the way pass the half-close on, for that connection only: no
subclass, no global adapter, whatever wrapper a program uses.
"""

from __future__ import annotations

import sys

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import alsoProvides

__all__ = ["lend_half_close"]


def _is_tls(wrapper: ProtocolWrapper) -> bool:
    """
    Whether the wrapper is Twisted's TLS layer.  Only a program that imported
    ``twisted.protocols.tls`` can have one, so nothing is imported here (on a
    machine without the TLS extra a failed import would be retried for every
    wrapped connection).
    """
    tls = sys.modules.get("twisted.protocols.tls")
    return tls is not None and isinstance(wrapper, tls.TLSMemoryBIOProtocol)


def lend_half_close(protocol: Protocol) -> None:
    """
    Let every ``ProtocolWrapper`` between ``protocol`` and the real transport
    deliver ``readConnectionLost`` and ``writeConnectionLost`` to it.

    Call it from ``connectionMade`` of a protocol that provides
    ``IHalfCloseableProtocol``.  A wrapper that is half-closeable already
    (capserv's own, a future Twisted's) is left as it is.
    """
    inner: object = protocol
    transport = protocol.transport
    while isinstance(transport, ProtocolWrapper) and transport.wrappedProtocol is inner:
        if _is_tls(transport):
            # TLS has its own end (close_notify), and its shutdown waits for
            # the peer's: a half-close beneath it is left to Twisted.
            break
        if not IHalfCloseableProtocol.providedBy(transport):
            alsoProvides(transport, IHalfCloseableProtocol)
            transport.readConnectionLost = inner.readConnectionLost
            transport.writeConnectionLost = inner.writeConnectionLost
        inner, transport = transport, transport.transport
