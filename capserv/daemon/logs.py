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

Both are `capserv.protocols.accesslog` observers: the per-connection lines are
written in batches, at least once a second and when capserv stops (a
SIGKILL can lose the last second of them); every other event is written at
once.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver

from capserv.protocols.accesslog import JSONLogObserver, TextLogObserver

__all__ = ["json_lines", "text_lines", "twisted_text"]


def json_lines() -> ILogObserver:
    """
    A JSON-lines observer on standard output (redirect it, or let systemd's
    journal take it).

    :rtype: twisted.logger.ILogObserver
    """
    return JSONLogObserver(sys.stdout)


def text_lines() -> ILogObserver:
    """
    twistd's text format on standard output, the per-connection lines
    written in batches.

    :rtype: twisted.logger.ILogObserver
    """
    return TextLogObserver(sys.stdout)


def twisted_text() -> ILogObserver:
    """
    twisted.logger's own text observer on standard output, what twistd
    builds for ``-n``: for measuring what `text_lines` saves
    (``bench/run.py``'s ``-twistdlog`` variants).

    :rtype: twisted.logger.ILogObserver
    """
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout)
