"""
Log observers for twistd's ``--logger`` option.

``twistd --logger=capserv.logs.json_lines -n capserv`` writes one JSON object
per line to standard output: every structured field of every event
(``peer``, ``bytes_in``, ``bytes_out``, ``duration``, ``reason``, ``limit``...)
for a log shipper to read.  Twisted's own ``jsonFileLogObserver`` starts
each record with an ASCII RS byte (``\\x1e``, RFC 7464 JSON text sequences)
unless told otherwise; these are plain JSON lines.

``--logger=capserv.logs.text_lines`` writes what twistd writes by default
(``TIME [SYSTEM] MESSAGE``), for less CPU.

Both are `capserv.accesslog` observers: the per-connection lines are
written in batches, at least once a second and when capserv stops (a
SIGKILL can lose the last second of them); every other event is written at
once.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile

from capserv.accesslog import JSONLogObserver, TextLogObserver

__all__ = ["json_lines", "text_lines", "twistd_observer", "twisted_text"]


def json_lines() -> ILogObserver:
    """
    A JSON-lines observer on standard output (redirect it, or let systemd's
    journal take it).
    """
    return JSONLogObserver(sys.stdout)


def text_lines() -> ILogObserver:
    """
    twistd's text format on standard output, the per-connection lines
    written in batches.
    """
    return TextLogObserver(sys.stdout)


def twistd_observer(logfile: str, nodaemon: bool) -> ILogObserver | None:
    """
    A `TextLogObserver` where twistd would make its own text observer for
    ``--logfile`` (or standard output under ``-n``), so the daemon's
    default log takes the cheap path too: the same file, the same lines.

    Make it what twistd logs to by setting it as the application's
    ``ILogObserver`` component (twistd uses that unless ``--logger`` is
    given; do not set it under ``--syslog``).

    :param logfile: twistd's ``--logfile`` value (``""`` if not given).
    :param nodaemon: twistd's ``-n``.
    :return: the observer, or `None` where twistd refuses the combination
        itself (``--logfile=-`` for a daemon).
    """
    out: Any
    if logfile == "-":
        if not nodaemon:
            return None
        out = sys.stdout
    elif nodaemon and not logfile:
        out = sys.stdout
    else:
        # As twistd does: a rotating file, rotated on SIGUSR1 too.
        out = LogFile.fromFullPath(logfile or "twistd.log")
        if not signal.getsignal(signal.SIGUSR1):

            def rotate(number: int, frame: object) -> None:
                from capserv.reactor import global_reactor

                global_reactor().callFromThread(out.rotate)

            signal.signal(signal.SIGUSR1, rotate)
    return TextLogObserver(out)


def twisted_text() -> ILogObserver:
    """
    twisted.logger's own text observer on standard output, what twistd
    builds for ``-n``: for measuring what `text_lines` saves
    (``bench/run.py``'s ``-twistdlog`` variants).
    """
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout)
