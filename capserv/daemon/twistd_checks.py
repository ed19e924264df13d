"""
twistd's own options, checked before anything starts.

twistd opens ``--logfile``, writes ``--pidfile``, switches to ``--uid`` and
``--gid`` and imports ``--logger`` only after capserv has parsed its options
(some after daemonizing), and reports a problem with any of them as a
traceback, or in the log of a daemon already detached.  capserv's `Options`
sees twistd's parsed options (its ``parent``) first, so `check_twistd`
checks what can be checked there and says what is wrong in one line.

(An unknown ``--uid`` or ``--gid`` name twistd looks up itself, while it
reads its own options, before capserv is loaded: that traceback is
Twisted's; a number, or a name that exists, comes here.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["TwistdOptionError", "check_twistd"]


class TwistdOptionError(Exception):
    """One of twistd's options cannot work; the text names it and what to write."""


def check_twistd(parent: Mapping[str, Any]) -> None:
    """
    Check twistd's parsed options: the folders of ``--logfile`` and
    ``--pidfile``, ``--uid``/``--gid`` against this user, and that
    ``--logger`` names something callable.

    :param parent: twistd's ``ServerOptions``, parsed.
    :raises TwistdOptionError: naming the option and what to write instead.
    """
    if not parent.get("chroot"):  # paths inside a chroot are not ours to check
        logfile = parent.get("logfile")
        if logfile is None and not parent.get("nodaemon") and not parent.get("syslog"):
            logfile = "twistd.log"  # where a daemon logs by default
        if logfile and logfile != "-":
            _check_writable("--logfile", logfile, "a log file")
        if parent.get("pidfile"):
            _check_writable("--pidfile", parent["pidfile"], "the pid file", "or --pidfile= for none")
    _check_ids(parent.get("uid"), parent.get("gid"))
    if parent.get("logger"):
        _check_logger(parent["logger"])


def _check_writable(option: str, path: str, what: str, other: str = "") -> None:
    """A file twistd will create or append to: its folder exists and this user may write there."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    instead = f"; write {option}=PATH naming {what} in a folder this user may write to{', ' + other if other else ''}"
    if os.path.isdir(full):
        raise TwistdOptionError(f"{option}={path}: {full} is a folder{instead}")
    if not os.path.isdir(folder):
        raise TwistdOptionError(f"{option}={path}: folder {folder} does not exist (mkdir -p {folder}){instead}")
    target = full if os.path.exists(full) else folder
    if not os.access(target, os.W_OK):
        raise TwistdOptionError(f"{option}={path}: no permission to write {target}{instead}")


def _check_ids(uid: int | None, gid: int | None) -> None:
    """
    A user twistd can switch to exists (twistd looks a number up only when
    it switches, after capserv has bound its ports); another user or group
    is only for root to switch to.
    """
    if os.name != "posix":
        return
    if uid is not None:
        import pwd

        try:
            pwd.getpwuid(uid)
        except KeyError:
            raise TwistdOptionError(
                f"--uid={uid}: no user has this number; write an existing user's name or number (id -u NAME)"
            ) from None
    if os.geteuid() == 0:
        return
    if uid is not None and uid != os.getuid():
        raise TwistdOptionError(f"--uid={uid}: only root can switch to another user; start as root, or leave --uid out")
    if gid is not None and gid != os.getgid():
        raise TwistdOptionError(
            f"--gid={gid}: only root can switch to another group; start as root, or leave --gid out"
        )


def _check_logger(name: Any) -> None:
    """``--logger`` names an importable, callable observer factory (twistd calls it with no arguments)."""
    if not isinstance(name, str):
        target = name  # already imported
    else:
        from twisted.python.reflect import namedAny

        try:
            target = namedAny(name)
        except Exception as e:  # whatever importing the module raises
            raise TwistdOptionError(
                f"--logger={name}: cannot import it ({type(e).__name__}: {e}); "
                "write module.function, such as capserv.logs.json_lines"
            ) from None
    if not callable(target):
        raise TwistdOptionError(
            f"--logger={name}: is not callable; write a function that makes a log observer, "
            "such as capserv.logs.json_lines"
        )
