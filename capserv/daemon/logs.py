"""
twistd ``--logger`` observers: ``json_lines`` (every plain field kept, unlike Twisted's) and
``text_lines`` (twistd's format); both write and rotate where twistd would, batch the access
lines, and drop Twisted's per-port start and stop lines (capserv's own say them).
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Mapping
from typing import Any

from twisted.logger import ILogObserver, LogEvent
from twisted.python.logfile import LogFile

from capserv.protocols.accesslog import JSONLogObserver, TextLogObserver, Writable

__all__ = ["follow_twistd", "is_port_chatter", "json_lines", "text_lines", "twisted_text"]

#: twisted.internet's ports' ``log.msg`` lines: ``"%s starting on %s"``, ``"(%s Port %s Closed)"``.
_PORT_CHATTER = re.compile(r".+ starting on (?:\d+|'.*'|\".*\")|\((?:[A-Z]+ )?Port .+ Closed\)")

_twistd: dict[str, Any] = {}


def is_port_chatter(event: LogEvent) -> bool:
    """Whether ``event`` is one of Twisted's legacy lines for a port starting or stopping."""
    message = event.get("message")
    return (
        event.get("log_namespace") == "log_legacy"
        and not event.get("isError")
        and isinstance(message, tuple | list)
        and len(message) == 1
        and isinstance(message[0], str)
        and _PORT_CHATTER.fullmatch(message[0]) is not None
    )


def follow_twistd(options: Mapping[str, Any] | None) -> None:
    """Remember twistd's ``--logfile`` and ``-n`` for the ``--logger`` factories, called later with no arguments."""
    _twistd.clear()
    if options is not None:
        _twistd.update(logfile=options.get("logfile") or "", nodaemon=bool(options.get("nodaemon")))


def _destination() -> Writable:
    """Where twistd's own observer would write (``twisted.scripts._twistd_unix.UnixAppLogger``)."""
    if not _twistd:
        return sys.stdout
    name, nodaemon = _twistd["logfile"], _twistd["nodaemon"]
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            raise SystemExit("capserv: a daemon cannot log to standard output (--logfile=-); add -n or name a file")
        return sys.stdout
    log_file: Writable = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # untaken: rotate on it, as twistd does

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def json_lines() -> ILogObserver:
    """JSON lines on twistd's log file, or standard output."""
    return JSONLogObserver(_destination(), drop=is_port_chatter)


def text_lines() -> ILogObserver:
    """twistd's text format where twistd would write it."""
    return TextLogObserver(_destination(), drop=is_port_chatter)


def twisted_text() -> ILogObserver:
    """twisted.logger's text observer on standard output, for the bench."""
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout)
