"""
The per-connection log line, made cheap.

capserv logs one line when each connection closes (`ACCESS_FORMAT`: peer,
duration, bytes in and out, reason) as a ``twisted.logger`` event, so every
observer gets it with its fields.  Measured (``bench/log_cost.py``), what
that line costs is not the file write but the observer's formatting:
twisted.logger's text observer (``twistd --logfile``) spends about 20 µs an
event on the time stamp (``formatTime``: a ``datetime`` and a time zone per
event) and on the message (``string.Formatter``), then writes and flushes
each line; its JSON observer flattens the event first and spends more.  On
the connect-per-message workload that was a quarter of the daemon's CPU.

This module gives observers that keep the same lines and fields and spend
about a tenth of that:

- `TextLogObserver` writes what ``textFileLogObserver`` writes (``TIME
  [SYSTEM] MESSAGE``), with the time stamp formatted once a second and the
  access line rendered from its fields with one ``%`` format; any other
  event goes through Twisted's own formatting;
- `JSONLogObserver` writes one JSON object a line: the rendered message as
  ``text``, the level, time and namespace, and the event's plain-data
  fields (`event_as_json`), the access line's built directly;
- both write through a `BufferedWriter`: access lines are collected and
  written together once a second (``flush_interval``), when 64 KiB are
  waiting (``buffer_size``) and when capserv stops (`flush_all`), as
  nginx's ``access_log ... buffer= flush=`` does.  Every other event (a
  warning, an error, "listening on") is written at once, after the lines
  before it, so order is kept and nothing but access lines waits.

What a crash can lose: a process killed with SIGKILL (or the OOM killer)
loses the access lines of at most the last flush interval -- at most one
second, at most 64 KiB of lines.  Any other stop (SIGTERM, SIGINT, the
reactor stopping, the interpreter exiting) writes them out.

The daemon stops through `flush_all`, which flushes (and
`close_all`, which also stops the timers of) every writer this module made.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
import weakref
from collections.abc import Callable
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

__all__ = [
    "ACCESS_FORMAT",
    "BufferedWriter",
    "JSONLogObserver",
    "TextLogObserver",
    "close_all",
    "event_as_json",
    "flush_all",
    "log_connection",
    "lost_reason",
    "render_access",
]

#: The close line's format.  `UppercaseProtocol` logs it with exactly these
#: fields; the observers here recognise it (by identity) to render it fast.
ACCESS_FORMAT = "{peer} closed after {duration:.3f}s: {bytes_in} bytes in, {bytes_out} bytes out ({reason})"

#: How long an access line may wait in a buffer, in seconds.
FLUSH_INTERVAL = 1.0
#: How many characters of access lines may wait before they are written.
BUFFER_SIZE = 65536

_writers: weakref.WeakSet[BufferedWriter] = weakref.WeakSet()


class Writable(Protocol):
    """A text file, or anything with its ``write`` and ``flush``."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def flush_all() -> None:
    """
    Write out every access line waiting in any `BufferedWriter`.

    The daemon calls this when it stops; it also runs when the interpreter
    exits, once a writer has been made (importing capserv registers
    nothing).
    """
    for writer in list(_writers):
        writer.flush()


def close_all() -> None:
    """
    Flush every `BufferedWriter` and cancel their timers (for a stop after
    which the reactor will not run again).
    """
    for writer in list(_writers):
        writer.close()


#: The logger of the per-connection line, under the namespace it always had
#: (the protocol's).  A module-level one: ``Logger`` as a class attribute
#: builds a new ``Logger`` each time it is looked up on an instance.
_connection_logger = Logger(namespace="capserv.tcp.UppercaseProtocol")


def log_connection(peer: str, duration: float, bytes_in: int, bytes_out: int, reason: str) -> None:
    """
    Log one connection's close line: the event ``Logger.info(ACCESS_FORMAT,
    peer=..., ...)`` would publish (the same fields, level, namespace,
    format and time), built directly.

    ``Logger.info`` spends about 4 µs an event checking its level and
    assembling the event; the observers are what the line is for.  The
    event's ``log_source`` is `None` (it was the protocol object, which no
    observer can write out).

    :param peer: the peer, as `capserv.protocols.addresses.describe` writes it.
    :param duration: seconds the connection was open.
    :param bytes_in: bytes read from the peer.
    :param bytes_out: bytes written to it.
    :param reason: why it ended.
    """
    logger = _connection_logger
    logger.observer(
        {
            "peer": peer,
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
    """
    Why a connection ended that capserv did not close, in the access line's
    words, from the failure its transport gave.
    """
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


def render_access(event: LogEvent) -> str:
    """
    The message of an access event: what ``formatEvent`` gives for
    `ACCESS_FORMAT`, from one ``%`` format.
    """
    return "%s closed after %.3fs: %s bytes in, %s bytes out (%s)" % (  # noqa: UP031 (measured faster)
        event["peer"],
        event["duration"],
        event["bytes_in"],
        event["bytes_out"],
        event["reason"],
    )


def is_access(event: LogEvent) -> bool:
    """
    Whether ``event`` is capserv's per-connection line (with its fields).
    """
    return event.get("log_format") is ACCESS_FORMAT


class BufferedWriter:
    """
    Collect text and write it to a file in batches.

    ``write(text)`` keeps the text; it is written (and the file flushed)
    once ``interval`` seconds have passed since the first text waiting,
    once ``limit`` characters are waiting, on `flush`, and at once for
    ``write(text, urgent=True)`` (after what was waiting).  Safe to call
    from any thread; the timer runs on ``clock`` (the global reactor,
    looked up when first needed, if `None`).

    :param out: the file to write to.
    :param clock: where the flush timer runs.
    :param interval: the longest a text waits, in seconds (0: never wait).
    :param limit: how many characters may wait.
    """

    def __init__(
        self,
        out: Writable,
        clock: IReactorTime | None = None,
        interval: float = FLUSH_INTERVAL,
        limit: int = BUFFER_SIZE,
    ) -> None:
        self._out = out
        self._clock = clock
        self.interval = interval
        self.limit = limit
        self._buffer: list[str] = []
        self._size = 0
        self._timer: IDelayedCall | None = None
        # Re-entrant: Twisted logs from its signal handlers ("Received
        # SIGTERM"), which Python runs in the main thread between any two
        # bytecodes -- also while this writer holds its lock.
        self._lock = threading.RLock()
        self._reactor_thread = threading.get_ident()
        if not _writers:
            atexit.unregister(flush_all)  # registered once, however many writers come and go
            atexit.register(flush_all)
        _writers.add(self)

    def write(self, text: str, urgent: bool = False) -> None:
        """
        Keep ``text`` to write with the next batch, or write it and
        everything before it now if ``urgent``.
        """
        with self._lock:
            self._buffer.append(text)
            self._size += len(text)
            if urgent or self._size >= self.limit or self.interval <= 0:
                self._write_out()
                return
            if self._timer is None and threading.get_ident() == self._reactor_thread:
                clock = self._clock
                if clock is None:
                    from capserv.protocols._twisted import global_reactor

                    clock = self._clock = global_reactor()
                self._timer = clock.callLater(self.interval, self.flush)

    def _write_out(self) -> None:
        """
        Write what is waiting (with the lock held).  The buffer is swapped
        out before it is written, so a call that interrupts this one (a
        signal handler logging) writes only its own lines: none twice.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        buffer = self._buffer
        if not buffer:
            return
        self._buffer = []
        self._size = 0
        text = "".join(buffer)
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError):
            pass  # a closed or full log file must not break the service

    def flush(self) -> None:
        """
        Write everything waiting now.  Gives up after a second if another
        thread holds the writer (so that stopping, or the interpreter
        exiting, never hangs on a log).
        """
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            self._write_out()
        finally:
            self._lock.release()

    def close(self) -> None:
        """
        Write everything waiting and forget the timer; the writer can still
        be used (and starts a new timer when needed).
        """
        self.flush()

    @property
    def waiting(self) -> int:
        """How many characters wait to be written."""
        return self._size


class _TimeStamps:
    """
    ``formatTime`` with a cache: the default format has one-second
    resolution, so the text is the same for every event in one second.
    """

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, time_format: str | None) -> None:
        self._format = time_format
        self._second = -1
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None or self._format != timeFormatRFC3339:
            return formatTime(when, self._format)
        second = int(when)
        if second != self._second:
            self._text = formatTime(second, self._format)
            self._second = second
        return self._text


@implementer(ILogObserver)
class TextLogObserver:
    """
    What ``textFileLogObserver`` writes, for less: access lines rendered
    from their fields and written in batches, the time stamp formatted once
    a second.

    :param out: the file (or a `BufferedWriter`).
    :param time_format: ``strftime`` format for the time stamp (Twisted's
        default: RFC 3339 to the second); `None` for no time stamp.
    :param clock: where the flush timer runs (the global reactor if
        `None`).
    :param interval: the longest an access line waits (0: never).
    """

    def __init__(
        self,
        out: Writable | BufferedWriter,
        time_format: str | None = timeFormatRFC3339,
        clock: IReactorTime | None = None,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.writer = out if isinstance(out, BufferedWriter) else BufferedWriter(out, clock, interval)
        self._stamp = _TimeStamps(time_format)

    def __call__(self, event: LogEvent) -> None:
        if is_access(event):
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
            stamp = self._stamp(event.get("log_time"))
            self.writer.write(f"{stamp} [{system}] {render_access(event)}\n")
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
    One event as a line of JSON: its rendered text, level, time, namespace
    and plain-data fields; a failure's traceback as ``failure``.

    Twisted's own ``eventAsJSON`` keeps the format string but not the
    message, and writes ``{"unpersistable": true}`` for every field it
    cannot serialize (the reactor, the logging object, a protocol); a log
    shipper can use neither.  This writes the text and leaves such fields
    out.
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


@implementer(ILogObserver)
class JSONLogObserver:
    """
    One JSON object a line (no record separator): the rendered message as
    ``text``, the level, time and namespace, and the event's plain-data
    fields (`event_as_json`); access lines built directly and written in
    batches.

    :param out: the file (or a `BufferedWriter`).
    :param clock: where the flush timer runs (the global reactor if `None`).
    :param interval: the longest an access line waits (0: never).
    """

    def __init__(
        self, out: Writable | BufferedWriter, clock: IReactorTime | None = None, interval: float = FLUSH_INTERVAL
    ) -> None:
        self.writer = out if isinstance(out, BufferedWriter) else BufferedWriter(out, clock, interval)

    def _access(self, event: LogEvent) -> str:
        """
        An access event as the JSON line `event_as_json` would write,
        built with one format.
        """
        peer, duration, bytes_in, bytes_out, reason = (
            event["peer"],
            event["duration"],
            event["bytes_in"],
            event["bytes_out"],
            event["reason"],
        )
        if not (
            type(peer) is str
            and type(reason) is str
            and type(duration) is float
            and type(bytes_in) is int
            and type(bytes_out) is int
        ):
            return event_as_json(event)
        level = event.get("log_level")
        return (
            f'{{"text": {_string(render_access(event))}, "level": "{level.name if level else "info"}", '
            f'"peer": {_string(peer)}, "duration": {duration!r}, "bytes_in": {bytes_in}, '
            f'"bytes_out": {bytes_out}, "reason": {_string(reason)}, '
            f'"namespace": {_string(event.get("log_namespace", ""))}, "time": {event.get("log_time", 0.0)!r}}}\n'
        )

    def __call__(self, event: LogEvent) -> None:
        if is_access(event):
            self.writer.write(self._access(event))
            return
        self.writer.write(event_as_json(event), urgent=True)


#: A JSON string literal for a str (the json module's own encoder).
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
