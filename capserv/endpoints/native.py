"""
Listen descriptions served on the event loop's own transports: `socket_maker`
turns a ``tcp:``, ``tcp6:`` or ``unix:`` description into the bound socket a
`capserv.native.NativeSocketEndpoint` takes, and `native_endpoint` stands in
for ``serverFromString``.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python.lockfile import FilesystemLock

from capserv.endpoints.grammar import split_description
from capserv.native import DEFAULT_BACKLOG, NativeSocketEndpoint, native_supported

__all__ = ["native_endpoint", "socket_maker"]


def socket_maker(description: str) -> tuple[Callable[[], socket.socket], dict[str, Any]] | None:
    """
    Parse a ``tcp:``, ``tcp6:`` or ``unix:`` description the way Twisted
    does (``unix:`` with its lock file unless ``lockfile=0``) into what a
    `NativeSocketEndpoint` takes::

        make_socket, options = socket_maker("tcp:50007:interface=127.0.0.1")
        NativeSocketEndpoint(reactor, make_socket, **options)

    :param description: a Twisted server endpoint description.
    :return: the function that makes the bound, listening socket (raising
        `OSError`, or `CannotListenError` for a UNIX lock held by a live
        process) and the endpoint's keyword arguments (``backlog``,
        ``interface``, ``port``, ``cleanup``); `None` for any other kind,
        or for parameters this module does not handle.
    :raises ValueError: for a malformed port, mode or backlog.
    :raises KeyError: for a description without its port or path.
    """
    parts = split_description(description)
    kind = parts[0].strip().lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    if args:
        kwargs.setdefault("address" if kind == "unix" else "port", args[0])
    backlog = int(kwargs.pop("backlog", DEFAULT_BACKLOG))
    if kind in ("tcp", "tcp6"):
        family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
        interface = kwargs.pop("interface", "::" if kind == "tcp6" else "")
        port = int(kwargs.pop("port"))
        if kwargs:
            return None

        def make_inet() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    info = socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
                    sock.bind(info[0][4])
                else:
                    sock.bind((interface, port))
                sock.listen(backlog)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock

        return make_inet, {"backlog": backlog, "interface": interface, "port": port}
    if kind == "unix":
        path = kwargs.pop("address")
        mode = int(kwargs.pop("mode", "666"), 8)
        # Twisted's default: a lock file beside the socket, and a socket
        # left behind by a process that died is removed.
        locked = bool(int(kwargs.pop("lockfile", "1")))
        if kwargs:
            return None
        lock = FilesystemLock(path + ".lock") if locked and not path.startswith("\0") else None

        def make_unix() -> socket.socket:
            if lock is not None:
                if not lock.lock():
                    raise CannotListenError(None, path, "Cannot acquire lock")
                if not lock.clean:
                    try:
                        if stat.S_ISSOCK(os.stat(path).st_mode):
                            os.remove(path)
                    except OSError:
                        pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                if not path.startswith("\0"):
                    os.chmod(path, mode)
                sock.listen(backlog)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                if lock is not None:
                    lock.unlock()
                raise
            return sock

        def unlock() -> None:
            if lock is not None and lock.locked:
                lock.unlock()

        return make_unix, {"backlog": backlog, "interface": "", "port": path, "cleanup": unlock}
    return None


def native_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    An endpoint for a Twisted server endpoint description, served by the
    event loop's own transports where it can be.

    Use it in place of ``twisted.internet.endpoints.serverFromString``:
    ``tcp:``, ``tcp6:`` and ``unix:`` descriptions on Twisted's asyncio
    reactor (and with ``CAPSERV_NATIVE`` not ``"0"``) give a
    `NativeSocketEndpoint`; anything else, or any other reactor, gives
    Twisted's endpoint for the description.

    :param reactor: the reactor to listen on.
    :param description: e.g. ``"tcp:50007:interface=127.0.0.1"``.
    :return: the endpoint; the socket is made when it listens.
    """
    if os.environ.get("CAPSERV_NATIVE", "") != "0" and native_supported(reactor):
        try:
            parsed = socket_maker(description)
        except (ValueError, KeyError):
            parsed = None  # let Twisted's parser name the problem
        if parsed is not None:
            make_socket, options = parsed
            return NativeSocketEndpoint(reactor, make_socket, **options)
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint
