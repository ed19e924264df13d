"""
Every place capserv reaches into Twisted's private attributes, in one module.

Each helper checks that the internals look as expected and otherwise does
nothing, so a Twisted release that changes them degrades to the public
behaviour instead of breaking.  The tox matrix runs these on the oldest and
newest Twisted capserv supports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["clear_exit_signal", "datagram_sender", "stream_writer"]


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


def stream_writer(transport: Any) -> Any:
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

    :return: the fast writer, or ``transport.write`` itself for transports
        whose internals are not the ones expected (TLS, PROXY-protocol
        wrappers, other reactors' transports).
    """
    from twisted.internet import tcp

    needed = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "connected", "_writeDisconnected", "disconnecting")
    if not isinstance(transport, tcp.Connection) or not all(hasattr(transport, name) for name in needed):
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


def datagram_sender(transport: Any) -> Any:
    """
    A ``send(data, addr)`` for a UDP port that calls ``sendto`` directly.

    ``udp.Port.write`` re-validates the destination (parsing it as an IP
    address) on every datagram; a reply goes back to the address
    ``recvfrom`` just gave, so that check can be skipped.  Errors are raised
    as `OSError`, which the caller counts.

    :return: the direct sender, or one that calls ``transport.write`` when
        the transport is not Twisted's ``udp.Port``.
    """
    from twisted.internet import udp

    if not isinstance(transport, udp.Port) or not hasattr(transport, "socket") or transport._connectedAddr:
        return transport.write
    return transport.socket.sendto
