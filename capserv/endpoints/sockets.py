"""
The one socket factory: the bound socket for what `capserv.endpoints.grammar`
read, for the daemon's listeners and the native endpoint alike.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from twisted.python.lockfile import FilesystemLock

from capserv.endpoints.grammar import Adopted, Inet, Unix
from capserv.protocols._twisted import systemd_descriptors

__all__ = ["make_socket", "release"]


def make_socket(address: Inet | Unix | Adopted, reuse_port: bool = False) -> socket.socket:
    """
    The bound socket (listening, for streams), non-blocking.

    A ``unix:`` socket takes Twisted's lock file (``PATH.lock``) unless
    ``lockfile=0``, and replaces a socket file no server answers on; call
    `release` once it is closed.

    :param reuse_port: set ``SO_REUSEPORT``, for ``--workers`` sharing a port.
    :raises OSError: if it cannot be bound (``EADDRINUSE`` naming the path
        for a UNIX socket a running server holds).
    """
    if isinstance(address, Adopted):
        sock = socket.socket(fileno=os.dup(systemd_descriptors()[address.index]))
    elif isinstance(address, Unix):
        sock = _unix(address)
    else:
        sock = socket.socket(address.family, socket.SOCK_DGRAM if address.datagram else socket.SOCK_STREAM)
        try:
            if not address.datagram:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(_inet_address(address))
            if not address.datagram:
                sock.listen(address.backlog)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def _inet_address(address: Inet) -> Any:
    """The socket address for a numeric host (with an IPv6 scope, if any)."""
    if not address.host:
        return ("", address.port)
    kind = socket.SOCK_DGRAM if address.datagram else socket.SOCK_STREAM
    flags = socket.AI_NUMERICHOST | socket.AI_PASSIVE
    return socket.getaddrinfo(address.host, address.port, address.family, kind, 0, flags)[0][4]


def _unix(address: Unix) -> socket.socket:
    path = address.path
    abstract = path.startswith("\0")
    if address.lockfile and not abstract and not FilesystemLock(path + ".lock").lock():
        raise OSError(errno.EADDRINUSE, f"its lock file {path}.lock is held by a running process", path)
    try:
        if not abstract:
            _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if not abstract:
                os.chmod(path, address.mode)
            sock.listen(address.backlog)
        except BaseException:
            sock.close()
            raise
    except BaseException:
        release(address)
        raise
    return sock


def _remove_stale(path: str) -> None:
    """Remove a socket file no server answers on; refuse a live one, or a file that is no socket."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(errno.EEXIST, "not a socket", path)
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left by a server that is gone
            return
        except OSError:
            return
    raise OSError(errno.EADDRINUSE, "in use", path)


def release(address: Inet | Unix | Adopted) -> None:
    """Let go of a UNIX socket's lock file, if this process holds it."""
    if isinstance(address, Unix) and address.lockfile:
        lock = address.path + ".lock"
        try:
            if os.readlink(lock) == str(os.getpid()):
                os.remove(lock)
        except OSError:
            pass
