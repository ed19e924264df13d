"""
Log observers for twistd's ``--logger``: ``json_lines`` (one JSON object per
line, every plain-data field kept: Twisted's ``jsonFileLogObserver`` keeps
only the format and starts records with RS) and ``text_lines`` (twistd's
text format, for less CPU). Both write where twistd's observer would, rotated
as twistd rotates, batch the per-connection lines
(`capserv.protocols.accesslog`), and drop Twisted's per-port start and stop
lines, which capserv's "Listening" and "stopped" lines say in its words.
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

#: twistd's ``--logfile`` and ``-n``, as `follow_twistd` was told them.
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


def _quiet(base: Any) -> Any:
    """``base`` (an accesslog observer class) without Twisted's port chatter."""

    class Quiet(base):  # type: ignore[misc]
        def __call__(self, event: LogEvent) -> None:
            if not is_port_chatter(event):
                super().__call__(event)

    return Quiet


_QuietJSON, _QuietText = _quiet(JSONLogObserver), _quiet(TextLogObserver)


def follow_twistd(options: Mapping[str, Any] | None) -> None:
    """
    Remember twistd's ``--logfile`` and ``-n`` for observers made later
    (twistd calls a ``--logger`` factory with no arguments, after
    `makeService`); `None`: standard output.
    """
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
    return _QuietJSON(_destination())  # type: ignore[no-any-return]


def text_lines() -> ILogObserver:
    """twistd's text format where twistd would write it."""
    return _QuietText(_destination())  # type: ignore[no-any-return]


def twisted_text() -> ILogObserver:
    """twisted.logger's own text observer on standard output, for measuring what `text_lines` saves (bench)."""
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout)
