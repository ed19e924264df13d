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
(``TIME [SYSTEM] MESSAGE``), for less CPU.

Both are `capserv.protocols.accesslog` observers: the per-connection lines are
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

from capserv.protocols.accesslog import JSONLogObserver, TextLogObserver

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
                from capserv.protocols._twisted import global_reactor

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


def install_for_twistd(application: Any, options: Any) -> bool:
    """
    Make twistd log through capserv's text observer (`twistd_observer`)
    when it would build its own text observer: no ``--logger`` and no
    ``--syslog`` given.

    Call it with the twistd application before twistd starts logging (for
    a plugin: from the service's ``setServiceParent``, whose parent is the
    application twistd made; twistd starts logging after that).

    :param application: the application (a ``Componentized``, as twistd's
        is).
    :param options: twistd's options (``logger``, ``syslog``, ``logfile``,
        ``nodaemon``), e.g. the plugin options' ``parent``.
    :return: whether capserv's observer was installed.
    """
    from twisted.logger import ILogObserver as LogObserverInterface

    def option(name: str) -> Any:
        try:
            return options[name]
        except (KeyError, TypeError):
            return None

    if option("logger") or option("syslog") or application.getComponent(LogObserverInterface, None) is not None:
        return False
    observer = twistd_observer(option("logfile") or "", bool(option("nodaemon")))
    if observer is None:
        return False
    application.setComponent(LogObserverInterface, observer)
    return True
