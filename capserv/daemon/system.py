"""The daemon's glue to the system: the reactor, the open-file limit, sd_notify, twistd's options checked early."""

from __future__ import annotations

import os
import pwd
import resource
import socket
import sys
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.reflect import namedAny

from capserv.protocols._twisted import global_reactor

__all__ = [
    "Notifier",
    "TwistdOptionError",
    "check_twistd",
    "choose_reactor",
    "notify_address",
    "raise_file_limit",
]

_rlimit_log = Logger(namespace="capserv.rlimits")
_notify_log = Logger(namespace="capserv.sdnotify.Notifier")


def choose_reactor(uvloop: bool = True, name: str | None = None) -> Any:
    """Install, unless twistd's ``--reactor`` did, reactor ``name``, else asyncio on uvloop if wanted and importable."""
    if "twisted.internet.reactor" not in sys.modules:
        if name:
            from twisted.application.reactors import installReactor

            installReactor(name)
        elif uvloop:
            try:
                import uvloop as _uvloop
            except ImportError:
                pass
            else:
                from twisted.internet import asyncioreactor

                # Handed to the reactor, not set through asyncio's policy system (deprecated in 3.14).
                asyncioreactor.install(_uvloop.new_event_loop())
    return global_reactor()


def raise_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (never past the hard one, never down); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        _rlimit_log.warn("Could not raise the open-file limit from {soft} to {target}", soft=soft, target=target)
        return soft
    return target


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The UNIX socket ``NOTIFY_SOCKET`` names, for ``sendto`` (``@name``: abstract); `None` if unset or ``vsock:``."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value if value.startswith("/") else None


class Notifier:
    """systemd's ``sd_notify(3)``: one datagram of ``NAME=value`` lines; nothing when ``address`` is `None`."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.sent: list[str] = []  # every message sent, in order

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``notify(READY="1", STATUS="...")``; a failure is logged, not raised. Returns whether sent."""
        if self.address is None:
            return False
        message = "".join(f"{name}={value}\n" for name, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.sendto(message.encode(), self.address)
        except OSError as e:
            _notify_log.warn(
                "Could not tell systemd {state} through NOTIFY_SOCKET: {error}",
                state=" ".join(fields),
                error=e.strerror or e,
            )
            return False
        self.sent.append(message)
        return True


class TwistdOptionError(Exception):
    """One of twistd's options cannot work; the text names it and what to write."""


def check_twistd(parent: Mapping[str, Any]) -> None:
    """Check now twistd's options it uses only later (some after daemonizing, with a traceback): `TwistdOptionError`."""
    if not parent.get("chroot"):  # paths inside a chroot are not ours to check
        logfile = parent.get("logfile")
        if logfile is None and not parent.get("nodaemon") and not parent.get("syslog"):
            logfile = "twistd.log"
        if logfile and logfile != "-":
            _check_writable("--logfile", logfile, "a log file")
        if parent.get("pidfile"):
            _check_writable("--pidfile", parent["pidfile"], "the pid file", ", or --pidfile= for none")
    uid, gid, logger = parent.get("uid"), parent.get("gid"), parent.get("logger")
    if uid is not None:  # twistd looks a number up only when it switches, after binding
        try:
            pwd.getpwuid(uid)
        except KeyError:
            raise TwistdOptionError(
                f"--uid={uid}: no user has this number; write an existing user's name or number (id -u NAME)"
            ) from None
    for option, wanted, mine, what in (("--uid", uid, os.getuid(), "user"), ("--gid", gid, os.getgid(), "group")):
        if wanted is not None and wanted != mine and os.geteuid() != 0:
            raise TwistdOptionError(
                f"{option}={wanted}: only root can switch to another {what}; start as root, or leave {option} out"
            )
    target = logger
    if isinstance(logger, str):
        try:
            target = namedAny(logger)
        except Exception as e:  # whatever importing the module raises
            raise TwistdOptionError(
                f"--logger={logger}: cannot import it ({type(e).__name__}: {e}); "
                "write module.function, such as capserv.logs.json_lines"
            ) from None
    if logger and not callable(target):
        raise TwistdOptionError(
            f"--logger={logger}: is not callable; write a function that makes a log observer, "
            "such as capserv.logs.json_lines"
        )


def _check_writable(option: str, path: str, what: str, other: str = "") -> None:
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    instead = f"; write {option}=PATH naming {what} in a folder this user may write to{other}"
    if os.path.isdir(full):
        raise TwistdOptionError(f"{option}={path}: {full} is a folder{instead}")
    if not os.path.isdir(folder):
        raise TwistdOptionError(f"{option}={path}: folder {folder} does not exist (mkdir -p {folder}){instead}")
    target = full if os.path.exists(full) else folder
    if not os.access(target, os.W_OK):
        raise TwistdOptionError(f"{option}={path}: no permission to write {target}{instead}")
