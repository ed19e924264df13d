"""The one socket factory, for the daemon's listeners and the native endpoint alike."""

from __future__ import annotations

import errno
import os
import socket
import stat

from twisted.python.lockfile import FilesystemLock

from capserv.endpoints.grammar import Adopted, Inet, Unix
from capserv.protocols._twisted import systemd_descriptors

__all__ = ["make_socket", "release"]


def make_socket(address: Inet | Unix | Adopted, reuse_port: bool = False) -> socket.socket:
    """
    The bound, non-blocking socket (listening, for streams; ``reuse_port`` for workers sharing a port).  A ``unix:``
    one takes Twisted's lock file unless ``lockfile=0`` and replaces a dead socket file; `release` it once closed.
    """
    if isinstance(address, Adopted):
        sock = socket.socket(fileno=os.dup(systemd_descriptors()[address.index]))
        sock.setblocking(False)
        return sock
    path = address.path if isinstance(address, Unix) else None
    real = path is not None and not path.startswith("\0")  # an abstract socket has no file
    if isinstance(address, Unix) and real and address.lockfile and not FilesystemLock(f"{path}.lock").lock():
        raise OSError(errno.EADDRINUSE, f"its lock file {path}.lock is held by a running process", path)
    family = socket.AF_UNIX if isinstance(address, Unix) else address.family
    sock = socket.socket(family, socket.SOCK_DGRAM if address.datagram else socket.SOCK_STREAM)
    try:
        if isinstance(address, Unix):
            if real:
                _remove_stale(address.path)
            sock.bind(address.path)
            if real:
                os.chmod(address.path, address.mode)
        else:
            if not address.datagram:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            flags = socket.AI_NUMERICHOST | socket.AI_PASSIVE
            where = address.host and socket.getaddrinfo(address.host, address.port, family, sock.type, 0, flags)
            sock.bind(where[0][4] if where else ("", address.port))  # with an IPv6 scope, if any
        if not address.datagram:
            sock.listen(address.backlog)
    except BaseException:
        sock.close()
        release(address)
        raise
    sock.setblocking(False)
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
        try:
            if os.readlink(address.path + ".lock") == str(os.getpid()):
                os.remove(address.path + ".lock")
        except OSError:
            pass
