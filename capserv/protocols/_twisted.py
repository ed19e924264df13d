"""
Every place capserv reaches into Twisted's private attributes, in one module.

Each helper checks that the internals look as expected and otherwise does
nothing, so a Twisted release that changes them degrades to the public
behaviour instead of breaking.  The tox matrix runs these on the oldest and
newest Twisted capserv supports.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

__all__ = [
    "clear_exit_signal",
    "datagram_sender",
    "endpoint_service",
    "global_reactor",
    "is_proxy_protocol",
    "proxy_header_read",
    "proxy_protocol_factory",
    "record_exit_signal",
    "reset_unnoticed",
    "stream_writer",
    "systemd_descriptors",
    "systemd_names",
    "unsent_bytes",
]


def global_reactor() -> Any:
    """
    Return the installed reactor (installing the default one if none is).
    """
    from twisted.internet import reactor

    return reactor


def clear_exit_signal(reactor: Any) -> bool:
    """
    Make twistd exit with status 0 after a graceful stop caused by a signal.

    twistd records the signal that stopped the reactor (``_exitSignal``) and,
    once the reactor has stopped, kills itself with that signal again, so a
    clean SIGTERM stop ends with status -15.  capserv's contract is status 0
    once open connections were let finish; forgetting the recorded signal
    gives that.

    :return: whether a recorded signal was cleared.
    """
    if isinstance(getattr(reactor, "_exitSignal", None), int):
        reactor._exitSignal = None
        return True
    return False


def record_exit_signal(reactor: Any, signum: int) -> None:
    """
    Record ``signum`` as the signal that stopped the reactor, as the
    reactor's own SIGTERM and SIGINT handlers do, so that a stop forced by a
    second signal ends twistd by it (`clear_exit_signal` undoes it).
    """
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = signum


def _tcp() -> Any:
    """``twisted.internet.tcp``, imported when first needed (it is not when
    the module is imported, so that no reactor is)."""
    global _tcp_module
    if _tcp_module is None:
        from twisted.internet import tcp

        _tcp_module = tcp
    return _tcp_module


_tcp_module: Any = None


def unsent_bytes(transport: Any) -> int | None:
    """
    How many bytes written to a stream transport are not yet sent, or `None`
    if the transport cannot tell.

    `capserv.native`'s transport says so publicly (``write_buffer_size``).
    Twisted's TCP transport keeps its buffer in ``dataBuffer`` (sent up to
    ``offset``) and ``_tempDataBuffer`` (``_tempDataLen`` bytes).

    :return: the count, or `None` for other transports (TLS, wrappers,
        test doubles) and when Twisted's internals are not the expected
        ones.
    """
    size = getattr(transport, "write_buffer_size", None)
    if isinstance(size, int):
        return size
    if not isinstance(transport, _tcp().Connection):
        return None
    buffer = getattr(transport, "dataBuffer", None)
    offset = getattr(transport, "offset", None)
    pending = getattr(transport, "_tempDataLen", None)
    if not isinstance(buffer, bytes) or not isinstance(offset, int) or not isinstance(pending, int):
        return None
    return len(buffer) - offset + pending


def stream_writer(transport: Any, fast: bool = True) -> Any:
    """
    A ``write(data)`` for a TCP or UNIX transport that sends at once when
    nothing is waiting to be sent.

    ``transport.write()`` only buffers and asks the reactor to call
    ``doWrite`` on its next iteration, when the socket is writable
    (twisted#5303): two extra ``epoll_ctl`` calls and a loop iteration per
    reply.  When the transport's buffer is empty, sending directly gives the
    same bytes in the same order sooner; whatever the socket does not take
    (or any error) goes through the normal ``write``, which buffers it and
    reports errors the usual way.

    :param fast: `False` for ``transport.write`` in every case
        (`CapservConfig.fast_paths`).
    :return: the fast writer, or ``transport.write`` itself for transports
        whose internals are not the ones expected (TLS, PROXY-protocol
        wrappers, other reactors' transports).
    """
    if not fast or not isinstance(transport, _tcp().Connection):
        return transport.write
    needed = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "connected", "_writeDisconnected", "disconnecting")
    if not all(hasattr(transport, name) for name in needed):
        return transport.write
    write: Callable[[bytes], None] = transport.write
    send: Callable[[bytes], int] = transport.socket.send

    def write_now(data: bytes) -> None:
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) != transport.offset
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or an error that the normal path will report.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return write_now


def datagram_sender(transport: Any, fast: bool = True) -> Any:
    """
    A ``send(data, addr)`` for a UDP port that calls ``sendto`` directly.

    ``udp.Port.write`` re-validates the destination (parsing it as an IP
    address) on every datagram; a reply goes back to the address
    ``recvfrom`` just gave, so that check can be skipped.  Errors are raised
    as `OSError`, which the caller counts.

    :param fast: `False` for ``transport.write`` in every case
        (`CapservConfig.fast_paths`).
    :return: the direct sender, or one that calls ``transport.write`` when
        the transport is not Twisted's ``udp.Port``.
    """
    from twisted.internet import udp

    if (
        not fast
        or not isinstance(transport, udp.Port)
        or not hasattr(transport, "socket")
        or getattr(transport, "_connectedAddr", True)
    ):
        return transport.write
    return transport.socket.sendto


def reset_unnoticed(transport: Any) -> bool:
    """
    Whether the socket under a Twisted transport holds an error its
    reactor was never told of (and clear it: reading ``SO_ERROR`` does).

    On uvloop, a reset that arrives while a Twisted transport waits to
    read comes out of libuv as a poll error, which uvloop drops without
    calling the reader (and libuv stops polling the descriptor): the
    connection looks open until something else closes it.  The socket
    still holds the error, so asking for it tells.  The socket is Twisted's
    ``tcp.Connection.socket``, reached through wrappers (TLS, PROXY) by
    their ``transport``; transports without one (capserv.native's, memory
    transports) have nothing to ask and answer no.
    """
    for _ in range(4):
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket):
            break
        transport = getattr(transport, "transport", None)
        if transport is None:
            return False
    else:
        return False
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:  # closed meanwhile: Twisted knows
        return False


def is_proxy_protocol(transport: Any) -> bool:
    """
    Whether a connection comes through Twisted's PROXY-protocol wrapper,
    whose ``getPeer()`` becomes the real client's address once the header
    is read (before the first data reaches capserv).
    """
    return hasattr(transport, "_proxyInfo") and hasattr(transport, "wrappedProtocol")


def proxy_header_read(transport: Any) -> bool:
    """
    Whether Twisted's PROXY-protocol wrapper has read a whole, valid
    header (it passes data on only after one, and none if none follows).
    """
    return getattr(transport, "_proxyInfo", None) is not None


def proxy_protocol_factory(factory: Any) -> Any:
    """
    Wrap a stream factory for connections through a PROXY-protocol load
    balancer (``haproxy:`` listen strings): the wrapping factory Twisted's
    public ``proxyEndpoint`` would use, made quiet (capserv logs its own
    listening lines).  The half-close passes through it because capserv's
    protocol lends it (`capserv.protocols.wrappers.lend_half_close`).
    """
    from twisted.protocols.haproxy import proxyEndpoint

    captured: list[Any] = []

    @implementer(IStreamServerEndpoint)
    class _Capture:
        def listen(self, wrapping: Any) -> Any:
            captured.append(wrapping)

    proxyEndpoint(_Capture()).listen(factory)
    captured[0].noisy = False
    return captured[0]


def endpoint_service(endpoint: Any, factory: Any) -> Any:
    """
    A ``StreamServerEndpointService`` that raises a listen failure from
    ``privilegedStartService`` instead of logging it later.

    Twisted's service has the switch as an attribute, ``_raiseSynchronously``
    (documented on the class, and what ``twistd``'s ``strports.service``
    sets); without it a port that cannot be bound would be a log line while
    the daemon went on running.
    """
    from twisted.application.internet import StreamServerEndpointService

    service = StreamServerEndpointService(endpoint, factory)
    if hasattr(service, "_raiseSynchronously"):
        service._raiseSynchronously = True
    return service


def systemd_descriptors() -> list[int]:
    """
    The sockets systemd passed to this process (``LISTEN_FDS``), in order.

    Twisted's ``systemd:`` endpoint parser reads the variables once, when
    ``twisted.internet.endpoints`` is imported, and removes them from the
    environment (as ``sd_listen_fds`` does), so asking
    ``ListenFDs.fromEnvironment()`` later finds nothing.  The parser keeps
    what it read; use that, and the environment only if it is not there.
    """
    return list(_listen_fds().inheritedDescriptors())


def systemd_names() -> list[str]:
    """
    The names systemd gave the sockets it passed (``FileDescriptorName=``),
    in the order of `systemd_descriptors`.
    """
    passed = _listen_fds()
    named: dict[str, int] = getattr(passed, "inheritedNamedDescriptors", dict)()
    by_descriptor = {descriptor: name for name, descriptor in named.items()}
    return [by_descriptor.get(descriptor, "") for descriptor in passed.inheritedDescriptors()]


def _listen_fds() -> Any:
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    parsed = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if isinstance(parsed, ListenFDs) and parsed.inheritedDescriptors():
        return parsed
    return ListenFDs.fromEnvironment()
