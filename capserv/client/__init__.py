"""
capserv's client: a Deferred-based API (`tcp_request`, `udp_request`,
`open_stream`) and the ``capserv-client`` command (`capserv.client.command`).
Cancelling a Deferred it returns closes what the call opened; its errors are
`CapservClientError`.
"""

from capserv.client._udp import (
    MAX_UDP_REPLY,
    MessageTooLongError,
    NoReplyError,
    ReplyTooLongError,
    resolve_udp,
    udp_request,
)
from capserv.client.api import (
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
