"""
Log observers for twistd's ``--logger`` option.

``twistd --logger=capserv.logs.json_lines -n capserv`` writes one JSON object
per line to standard output: every structured field of every event
(``peer``, ``bytes_in``, ``bytes_out``, ``duration``, ``reason``, ``limit``...)
for a log shipper to read.  Twisted's own ``jsonFileLogObserver`` starts
each record with an ASCII RS byte (``\\x1e``, RFC 7464 JSON text sequences)
unless told otherwise; here it is told to write plain JSON lines.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver

__all__ = ["json_lines"]


def json_lines() -> FileLogObserver:
    """
    A JSON-lines observer on standard output (redirect it, or let systemd's
    journal take it).
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
