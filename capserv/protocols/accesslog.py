"""
The per-connection log line, made cheap: a ``twisted.logger`` event (every
observer gets its fields) that `TextLogObserver` and `JSONLogObserver` render
from its fields in one format and write in batches (`BufferedWriter`: once a
second, at 64 KiB and at stop, as nginx's ``access_log ... buffer= flush=``).
When one of them is the only observer, it gets the fields without an event.
Every other event is written at once, after the lines before it.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
import weakref
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Protocol

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv.protocols._twisted import global_reactor, sole_observer
from capserv.protocols.addresses import describe

__all__ = [
    "ACCESS_FORMAT",
    "AccessFields",
    "BufferedWriter",
    "JSONLogObserver",
    "TextLogObserver",
    "event_as_json",
    "flush_all",
    "log_connection",
    "lost_reason",
    "render_access",
]

#: The close line's format, recognised by identity by the observers here.
ACCESS_FORMAT = "{peer} closed after {duration:.3f}s: {bytes_in} bytes in, {bytes_out} bytes out ({reason})"

FLUSH_INTERVAL = 1.0  # seconds an access line may wait
BUFFER_SIZE = 65536  # characters that may wait

_writers: weakref.WeakSet[BufferedWriter] = weakref.WeakSet()


class Writable(Protocol):
    """A text file, or anything with its ``write`` and ``flush``."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def flush_all() -> None:
    """Write out every waiting access line (at the daemon's stop, and at the interpreter's exit)."""
    for writer in list(_writers):
        writer.flush()


#: An access line's fields: peer (its text, or an address `describe` gives it), duration, bytes in,
#: bytes out, reason, and when it was logged.
AccessFields = tuple[object, float, int, int, str, float]

_connection_logger = Logger(namespace="capserv.tcp.UppercaseProtocol")
_ACCESS_SYSTEM = f"{_connection_logger.namespace}#info"


def log_connection(peer: object, duration: float, bytes_in: int, bytes_out: int, reason: str) -> None:
    """
    Publish the event ``Logger.info(ACCESS_FORMAT, peer=..., ...)`` would,
    built directly, ``peer`` an address or its text (`describe`); if capserv's
    observer is the only one, hand it just the fields, to render in its batch
    (the same line, for a fraction of the cost inside the daemon).
    """
    logger = _connection_logger
    sole = sole_observer(logger.observer)
    if type(sole) is JSONLogObserver or type(sole) is TextLogObserver:  # a subclass gets the event
        sole.writer.add(sole._render_fields, (peer, duration, bytes_in, bytes_out, reason, time.time()))
        return
    logger.observer(
        {
            "peer": describe(peer),
            "duration": duration,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "reason": reason,
            "log_logger": logger,
            "log_level": LogLevel.info,
            "log_namespace": logger.namespace,
            "log_source": None,
            "log_format": ACCESS_FORMAT,
            "log_time": time.time(),
        }
    )


def lost_reason(reason: Failure | None) -> str:
    """Why a connection that capserv did not close ended, in the access line's words."""
    if reason is None or reason.check(ConnectionDone):
        return "closed by peer"
    if reason.check(ConnectionLost):
        return "reset by peer"
    value = reason.value
    if type(value).__module__.startswith("OpenSSL"):
        # pyOpenSSL's errors: a list of (library, function, reason) triples.
        errors = value.args[0] if value is not None and value.args else None
        if isinstance(errors, list) and errors and isinstance(errors[-1], tuple) and errors[-1]:
            return f"TLS error: {errors[-1][-1]}"
        return "TLS error"
    return f"lost: {type(value).__name__}: {value}"


#: `ACCESS_FORMAT` as one ``%`` format (faster than ``formatEvent``): peer, duration, bytes in, bytes out, reason.
_ACCESS_TEXT = "%s closed after %.3fs: %s bytes in, %s bytes out (%s)"


def render_access(event: LogEvent) -> str:
    """What ``formatEvent`` gives for an access event."""
    text: str = _ACCESS_TEXT % _access_fields(event)
    return text


#: An item waiting for its renderer; a run of them is rendered in one call when the batch is written.
Pending = tuple[Callable[[list[Any]], str], Any]
_access_fields = itemgetter("peer", "duration", "bytes_in", "bytes_out", "reason")


def _rendered(buffer: list[str | Pending]) -> list[str]:
    """The texts of a batch: each run of items of one renderer rendered in one call."""
    texts: list[str] = []
    run: list[Any] = []
    render: Callable[[list[Any]], str] | None = None
    for part in buffer:
        if isinstance(part, str) or part[0] is not render:
            if run:
                texts.append(render(run))  # type: ignore[misc]
                run = []
            if isinstance(part, str):
                render = None
                texts.append(part)
                continue
            render = part[0]
        run.append(part[1])
    if run:
        texts.append(render(run))  # type: ignore[misc]
    return texts


class BufferedWriter:
    """
    Write text to a file in batches: ``interval`` seconds after the first
    text waits, at ``limit`` characters, on `flush`, and at once if
    ``urgent``.  Safe from any thread; the timer runs on ``clock`` (default:
    the global reactor, looked up when needed).
    """

    def __init__(
        self,
        out: Writable,
        clock: IReactorTime | None = None,
        interval: float = FLUSH_INTERVAL,
        limit: int = BUFFER_SIZE,
    ) -> None:
        self._out, self._clock, self.interval, self.limit = out, clock, interval, limit
        self._buffer: list[str | Pending] = []
        self._size = 0
        self._timer: IDelayedCall | None = None
        # Re-entrant: Twisted's signal handlers log between any two bytecodes, also while this lock is held.
        self._lock = threading.RLock()
        self._reactor_thread = threading.get_ident()
        if not _writers:
            atexit.unregister(flush_all)  # registered once, however many writers come and go
            atexit.register(flush_all)
        _writers.add(self)

    def write(self, text: str, urgent: bool = False) -> None:
        """Keep ``text`` for the next batch, or write all now if ``urgent``."""
        with self._lock:
            self._buffer.append(text)
            self._size += len(text)
            self._keep(urgent)

    def add(self, render: Callable[[list[Any]], str], item: Any) -> None:
        """Keep ``item`` for the next batch, rendered with the items added just before it: ``render(items)``."""
        with self._lock:
            self._buffer.append((render, item))  # one step: a signal handler's write cannot split it
            self._size += 300  # about an access line
            if self._size >= self.limit or self.interval <= 0 or self._timer is None:
                self._keep(False)  # write out, or see that the timer will

    def _keep(self, urgent: bool) -> None:
        """Write all now if ``urgent`` or full, else see that a timer will (lock held)."""
        if urgent or self._size >= self.limit or self.interval <= 0:
            self._write_out()
        elif self._timer is None and threading.get_ident() == self._reactor_thread:
            if self._clock is None:
                self._clock = global_reactor()
            self._timer = self._clock.callLater(self.interval, self.flush)

    def _write_out(self) -> None:
        """Write what waits (lock held), swapped out first so a signal handler's line is written once."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        buffer = self._buffer
        if not buffer:
            return
        self._buffer, self._size = [], 0
        text = "".join(_rendered(buffer))
        try:
            self._out.write(text)
            self._out.flush()
        except RuntimeError:  # a signal handler's line while the file is mid-write: io is not re-entrant
            self._buffer.insert(0, text)
            self._size += len(text)
        except (OSError, ValueError):
            pass  # a closed or full log file must not break the service

    def flush(self) -> None:
        """Write everything waiting now (giving up after a second if another thread holds the writer)."""
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            self._write_out()
        finally:
            self._lock.release()

    @property
    def waiting(self) -> int:
        """How many characters wait to be written."""
        return self._size


@implementer(ILogObserver)
class TextLogObserver:
    """
    What ``textFileLogObserver`` writes, for less.

    :param time_format: ``strftime`` format of the time stamp; `None` for none.
    :param interval: the longest an access line waits (0: never).
    :param drop: events other than access lines to leave out.
    """

    def __init__(
        self,
        out: Writable | BufferedWriter,
        time_format: str | None = timeFormatRFC3339,
        clock: IReactorTime | None = None,
        interval: float = FLUSH_INTERVAL,
        drop: Callable[[LogEvent], bool] | None = None,
    ) -> None:
        self.writer = out if isinstance(out, BufferedWriter) else BufferedWriter(out, clock, interval)
        self._format, self._drop = time_format, drop
        self._second, self._text = -1, ""  # the last time stamp, for its second (the default's resolution)
        self._render_fields = self._access_texts  # one bound method: `BufferedWriter.add` batches by identity

    def _stamp(self, when: float | None) -> str:
        if when is None or self._format != timeFormatRFC3339:
            return formatTime(when, self._format)
        second = int(when)
        if second != self._second:
            self._second, self._text = second, formatTime(second, self._format)
        return self._text

    def _access_texts(self, batch: list[AccessFields]) -> str:
        stamp, text = self._stamp, _ACCESS_TEXT
        return "".join(
            [
                f"{stamp(when)} [{_ACCESS_SYSTEM}] {text % (describe(peer), duration, bytes_in, bytes_out, why)}\n"
                for peer, duration, bytes_in, bytes_out, why, when in batch
            ]
        )

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") is ACCESS_FORMAT:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
            stamp = self._stamp(event.get("log_time"))
            self.writer.write(f"{stamp} [{system}] {render_access(event)}\n")
            return
        if self._drop is not None and self._drop(event):
            return
        text = formatEventAsClassicLogText(event, formatTime=self._stamp)
        if text:
            self.writer.write(text, urgent=True)


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
    One event as a line of JSON: its text, level, time, namespace, plain-data
    fields and a failure's traceback (Twisted's ``eventAsJSON`` keeps no text,
    and writes ``{"unpersistable": true}`` for other fields).
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


_ACCESS_TYPES = (str, float, int, int, str)


@implementer(ILogObserver)
class JSONLogObserver:
    """One JSON object a line (`event_as_json`); ``interval`` and ``drop`` as `TextLogObserver`'s."""

    def __init__(
        self,
        out: Writable | BufferedWriter,
        clock: IReactorTime | None = None,
        interval: float = FLUSH_INTERVAL,
        drop: Callable[[LogEvent], bool] | None = None,
    ) -> None:
        self.writer = out if isinstance(out, BufferedWriter) else BufferedWriter(out, clock, interval)
        self._drop = drop
        self._names: dict[str, str] = {}
        self._reasons: dict[str, str] = {}
        self._render_fields = self._access_lines  # one bound method each: `BufferedWriter.add` batches by identity
        self._render_events = self._access_events

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") is ACCESS_FORMAT:
            self.writer.add(self._render_events, event)
        elif self._drop is None or not self._drop(event):
            self.writer.write(event_as_json(event), urgent=True)

    def _access_events(self, events: list[LogEvent]) -> str:
        lines = []
        for event in events:
            fields = _access_fields(event)
            when = event.get("log_time")
            if tuple(map(type, fields)) != _ACCESS_TYPES or type(when) is not float:
                lines.append(event_as_json(event))
                continue
            level, namespace = event.get("log_level"), event.get("log_namespace", "")
            lines.append(self._access_lines([(*fields, when)], level.name if level else "info", namespace))
        return "".join(lines)

    def _access_lines(
        self, batch: list[AccessFields], level: str = "info", namespace: str = _connection_logger.namespace
    ) -> str:
        """Access lines; peers and reasons escaped as JSON, each reason once (most repeat)."""
        name = self._names.get(namespace) or self._names.setdefault(namespace, _string(namespace))
        reasons = self._reasons
        lines = []
        for peer, duration, bytes_in, bytes_out, reason, when in batch:
            why = reasons.get(reason)
            if why is None:  # a table emptied when full
                if len(reasons) >= 256:
                    reasons.clear()
                why = reasons[reason] = _string(reason)[1:-1]
            peer = _string(describe(peer))[1:-1]
            # event_as_json's object in one f-string (the fastest format): text, level, fields, namespace,
            # time; time and duration to the microsecond (cheaper than repr's shortest exact digits).
            lines.append(
                f'{{"text": "{peer} closed after {duration:.3f}s: {bytes_in} bytes in, {bytes_out} bytes out ({why})", '
                f'"level": "{level}", "peer": "{peer}", "duration": {duration:.6f}, "bytes_in": {bytes_in}, '
                f'"bytes_out": {bytes_out}, "reason": "{why}", "namespace": {name}, "time": {when:.6f}}}\n'
            )
        return "".join(lines)


#: A JSON string literal for a str (the json module's own encoder, as `event_as_json`'s).
_string: Callable[[str], str] = json.encoder.encode_basestring
