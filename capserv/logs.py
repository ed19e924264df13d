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

import sys

from twisted.logger import ILogObserver

from capserv.accesslog import JSONLogObserver, TextLogObserver

__all__ = ["json_lines", "text_lines"]


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
