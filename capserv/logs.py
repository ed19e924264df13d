"""
Log observers for twistd's ``--logger`` option.

``twistd --logger=capserv.logs.json_lines -n capserv`` writes one JSON object
per line to standard output: the rendered message (``text``), the level,
the time, the namespace, and every structured field of the event that is
plain data (``peer``, ``bytes_in``, ``bytes_out``, ``duration``,
``reason``, ``limit``...), for a log shipper to read.

Twisted's own ``jsonFileLogObserver`` keeps the format string but not the
message, and writes ``{"unpersistable": true}`` for every field it cannot
serialize (the reactor, the logging object, a protocol); a log shipper can
use neither.  This observer writes the text and leaves such fields out.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent, formatEvent

__all__ = ["event_as_json", "json_lines"]

_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    return False


def event_as_json(event: LogEvent) -> str:
    """
    One event as a line of JSON: its rendered text, level, time, namespace
    and plain-data fields; a failure's traceback as ``failure``.
    """
    record: dict[str, Any] = {"text": formatEvent(event)}
    level = event.get("log_level")
    if level is not None:
        record["level"] = level.name
    for key, value in event.items():
        if key in ("log_format", "log_level", "log_logger", "log_source", "log_failure", "log_io"):
            continue
        if key == "log_time":
            record["time"] = value
        elif key == "log_namespace":
            record["namespace"] = value
        elif not key.startswith("log_") and key not in record and _plain(value):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_lines(out: IO[str] | None = None) -> FileLogObserver:
    """
    A JSON-lines observer on standard output (redirect it, or let systemd's
    journal take it).
    """
    return FileLogObserver(out if out is not None else sys.stdout, event_as_json)
