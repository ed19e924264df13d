"""
systemd's readiness protocol (``sd_notify``), for ``Type=notify`` units.

Under a ``Type=notify`` unit systemd sets ``NOTIFY_SOCKET`` and waits for the
service to send ``READY=1`` before it counts the start as done (and starts
the units ordered after it); ``STOPPING=1`` tells it a stop has begun.  A
message is one datagram of ``NAME=value`` lines to an ``AF_UNIX`` socket: a
file path, or an abstract name written with a leading ``@``.  systemd
documents the protocol as a stable interface meant to be reimplemented
(sd_notify(3)), and this module is that: a few lines of the standard
library.

Why not a package: ``sdnotify`` (pure Python) was last released in 2017;
``systemd-python`` and ``cysystemd`` link libsystemd and need a compiler
and its headers to install; ``systemd-watchdog`` opens a socket whether or
not there is anything to notify, and leaves the abstract-name form
untested.  None is worth a dependency for one ``sendto``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["NOTIFY_VARIABLE", "Notifier", "notify_address"]

#: The environment variable that names systemd's notification socket.
NOTIFY_VARIABLE = "NOTIFY_SOCKET"

#: Seconds a send may block if systemd's socket is full (it never is in
#: practice: systemd reads it at once and gives it a large buffer).
SEND_TIMEOUT = 1.0


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """
    The socket address ``NOTIFY_SOCKET`` names, ready for ``sendto``, or
    `None` if it is unset or not a UNIX socket (systemd also knows
    ``vsock:`` addresses, for virtual machines; capserv does not notify
    those).

    :param environ: the environment to read; the process's by default.
    """
    value = (os.environ if environ is None else environ).get(NOTIFY_VARIABLE, "")
    if value.startswith("@"):
        # An abstract socket: its name starts with a NUL byte.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


#: Notifier's logger, under the namespace operators filter on.
_log = Logger(namespace="capserv.sdnotify.Notifier")


class Notifier:
    """
    Send state changes to systemd, if it asked for them; otherwise do
    nothing.
    """

    def __init__(self, address: str | bytes | None) -> None:
        """
        :param address: where to send (`notify_address`), or `None` to send
            nothing.
        """
        self.address = address
        #: Every message sent, in order (for the log and for tests).
        self.sent: list[str] = []

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for the socket ``NOTIFY_SOCKET`` names (if any)."""
        return cls(notify_address(environ))

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening."""
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """
        Send one message: each keyword is a ``NAME=value`` line
        (``notify(READY="1", STATUS="Serving")``).

        :return: whether it was sent; a failure is logged, never raised (the
            service goes on serving; systemd's own start or stop timeout
            decides what happens next).
        """
        if self.address is None:
            return False
        message = "".join(f"{name}={value}\n" for name, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message.encode(), self.address)
        except OSError as e:
            _log.warn(
                "Could not tell systemd {state} through NOTIFY_SOCKET: {error}",
                state=" ".join(fields),
                error=e.strerror or e,
            )
            return False
        self.sent.append(message)
        return True
