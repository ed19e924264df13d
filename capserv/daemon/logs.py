"""
Log observers for twistd's ``--logger`` option.

``twistd --logger=capserv.daemon.logs.json_lines -n capserv`` writes one JSON object
per line to standard output: the rendered message (``text``), the level,
the time, the namespace, and every structured field of the event that is
plain data (``peer``, ``bytes_in``, ``bytes_out``, ``duration``,
``reason``, ``limit``...), for a log shipper to read
(`capserv.protocols.accesslog.event_as_json`).  Twisted's own ``jsonFileLogObserver``
keeps only the format string, writes ``{"unpersistable": true}`` for fields
it cannot serialize and starts each record with an RS byte.

``--logger=capserv.daemon.logs.text_lines`` writes what twistd writes by default
(``TIME [SYSTEM] MESSAGE``), for less CPU; without ``--logger`` twistd logs
through its own observers, as for any plugin.

Both write where twistd's own observer would: the ``--logfile`` file
(``twistd.log`` for a daemon without one; ``-`` or ``-n`` without one:
standard output), rotated as twistd rotates it (at 1 MB, and on SIGUSR1).
twistd calls a ``--logger`` factory with no arguments, so `makeService`
hands its ``--logfile`` and ``-n`` over first (`follow_twistd`).

Both leave out Twisted's start and stop lines for each port (``Factory
starting on 50007``, ``(UDP Port 50007 Closed)``, `is_port_chatter`):
Twisted writes them whatever ``noisy`` says, and capserv's own
"Listening for ..." and "capserv stopped" lines say the same in its words.

Both are `capserv.protocols.accesslog` observers: the per-connection lines are
written in batches, at least once a second and when capserv stops (a
SIGKILL can lose the last second of them); every other event is written at
once.
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

#: What twisted.internet's ports log through the legacy ``log.msg`` when they
#: start and stop (tcp.py, udp.py, unix.py: ``"%s starting on %s"``,
#: ``"(%s Port %s Closed)"``, ``"(Port %s Closed)"``), rendered: a port
#: number or a path's repr; the type is TCP, UDP, TLS, UNIX...
_PORT_CHATTER = re.compile(r".+ starting on (?:\d+|'.*'|\".*\")|\((?:[A-Z]+ )?Port .+ Closed\)")


def is_port_chatter(event: LogEvent) -> bool:
    """
    Whether ``event`` is one of Twisted's own lines for a port starting or
    stopping: a legacy ``log.msg`` (namespace ``log_legacy``, one message,
    not an error) in the words of twisted.internet's ports.
    """
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return False
    message = event.get("message")
    return (
        isinstance(message, tuple | list)
        and len(message) == 1
        and isinstance(message[0], str)
        and _PORT_CHATTER.fullmatch(message[0]) is not None
    )


class _QuietJSON(JSONLogObserver):
    """`JSONLogObserver` without Twisted's port chatter (`is_port_chatter`)."""

    def __call__(self, event: LogEvent) -> None:
        if not is_port_chatter(event):
            super().__call__(event)


class _QuietText(TextLogObserver):
    """`TextLogObserver` without Twisted's port chatter (`is_port_chatter`)."""

    def __call__(self, event: LogEvent) -> None:
        if not is_port_chatter(event):
            super().__call__(event)


#: twistd's ``--logfile`` and ``-n``, as `follow_twistd` was told them.
_twistd: dict[str, Any] = {}


def follow_twistd(options: Mapping[str, Any] | None) -> None:
    """
    Remember twistd's ``--logfile`` and ``-n`` for the observers made after
    this call (`makeService` runs before twistd calls the ``--logger``
    factory).

    :param options: twistd's own parsed options; `None` (capserv run other
        than by twistd): standard output.
    """
    _twistd.clear()
    if options is not None:
        _twistd.update(logfile=options.get("logfile") or "", nodaemon=bool(options.get("nodaemon")))


def _destination() -> Writable:
    """
    Where twistd's own observer would write, as
    ``twisted.scripts._twistd_unix.UnixAppLogger`` decides it.
    """
    if not _twistd:
        return sys.stdout
    name, nodaemon = _twistd["logfile"], _twistd["nodaemon"]
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            # twistd's own words for this, in one line.
            raise SystemExit("capserv: a daemon cannot log to standard output (--logfile=-); add -n or name a file")
        return sys.stdout
    log_file: Writable = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # SIG_DFL (0) or None: take it, as twistd does

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def json_lines() -> ILogObserver:
    """
    A JSON-lines observer on twistd's log file, or standard output
    (redirect it, or let systemd's journal take it).

    :rtype: twisted.logger.ILogObserver
    """
    return _QuietJSON(_destination())


def text_lines() -> ILogObserver:
    """
    twistd's text format where twistd would write it, the per-connection
    lines written in batches.

    :rtype: twisted.logger.ILogObserver
    """
    return _QuietText(_destination())


def twisted_text() -> ILogObserver:
    """
    twisted.logger's own text observer on standard output, what twistd
    builds for ``-n``: for measuring what `text_lines` saves
    (``bench/run.py``'s ``-twistdlog`` variants).

    :rtype: twisted.logger.ILogObserver
    """
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout)
