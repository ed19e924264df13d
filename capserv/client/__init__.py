"""
capserv's client: a Deferred API and the ``capserv-client`` command (`capserv.client.command`).
Cancelling a returned Deferred closes what the call opened; the errors the client detects are
`CapservClientError`, while the endpoint's connection errors pass through as Twisted's (docs/client.rst).
"""

from capserv.client.datagram import (
    MAX_UDP_REPLY,
    MessageTooLongError,
    NoReplyError,
    ReplyTooLongError,
    resolve_udp,
    udp_request,
)
from capserv.client.stream import (
    CapservClientError,
    ClientReactor,
    ReplyTimeoutError,
    ServerClosedError,
    StreamClientEndpoint,
    StreamSession,
    open_stream,
    tcp_request,
)

__all__ = [
    "MAX_UDP_REPLY",
    "CapservClientError",
    "ClientReactor",
    "MessageTooLongError",
    "NoReplyError",
    "ReplyTimeoutError",
    "ReplyTooLongError",
    "ServerClosedError",
    "StreamClientEndpoint",
    "StreamSession",
    "open_stream",
    "resolve_udp",
    "tcp_request",
    "udp_request",
]
