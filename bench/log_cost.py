"""
What one connection's close line costs, per event, in microseconds.

    python bench/log_cost.py [--events N]

Measures, in one process, the ways capserv's per-connection line can reach
a log:

- ``twisted.logger, no observer``: building and publishing the event only;
- ``twisted.logger -> text file``: what ``twistd --logfile`` (and ``-n``
  on standard output) does: format the event as text (time stamp, system,
  message) and write and flush it, one ``write`` per event;
- ``twisted.logger -> JSON lines``: what ``--logger=capserv.daemon.logs.json_lines``
  does;
- ``the pieces of the text observer``: formatting the time stamp, formatting
  the message, the write and flush alone;
- ``capserv.protocols.accesslog``'s observers: the same line (and JSON object)
  rendered from its fields, written in batches.

The numbers are for comparing with each other in one run on one machine,
not across machines.  Note the load (``uptime``) beside any figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogPublisher,
    eventAsText,
    formatEvent,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)

from capserv.protocols import accesslog
from capserv.protocols.accesslog import (
    ACCESS_FORMAT,
    BufferedWriter,
    JSONLogObserver,
    TextLogObserver,
    flush_all,
    log_connection,
    render_access,
)

FORMAT = ACCESS_FORMAT
FIELDS = {"peer": "127.0.0.1:54321", "duration": 0.00123, "bytes_in": 64, "bytes_out": 64, "reason": "end of input"}


def per_event(n: int, f: Callable[[], object]) -> float:
    """Best of three runs of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    n = args.events
    folder = tempfile.mkdtemp()
    results: list[tuple[str, float]] = []

    def logger_to(observers: list[Callable[[dict[str, object]], None]]) -> Callable[[], None]:
        publisher = LogPublisher(*observers)
        log = Logger(namespace="capserv.tcp.UppercaseProtocol", observer=publisher)
        return lambda: log.info(FORMAT, **FIELDS)

    results.append(("twisted.logger, no observer", per_event(n, logger_to([]))))
    text_file = open(os.path.join(folder, "text.log"), "w")
    results.append(
        ("twisted.logger -> text file (twistd --logfile)", per_event(n, logger_to([textFileLogObserver(text_file)])))
    )
    json_file = open(os.path.join(folder, "json.log"), "w")
    results.append(
        ("twisted.logger -> JSON lines (--logger)", per_event(n, logger_to([jsonFileLogObserver(json_file, "")])))
    )

    event = {"log_format": FORMAT, "log_time": time.time(), "log_namespace": "x", "log_level": None, **FIELDS}
    results.append(("  of which: time stamp (formatTime)", per_event(n, lambda: formatTime(event["log_time"]))))  # type: ignore[arg-type]
    results.append(("  of which: message (formatEvent)", per_event(n, lambda: formatEvent(event))))
    results.append(("  of which: whole text line (eventAsText)", per_event(n, lambda: eventAsText(event))))
    line = eventAsText(event) + "\n"
    raw = open(os.path.join(folder, "raw.log"), "w")

    def write_flush() -> None:
        raw.write(line)
        raw.flush()

    results.append(("  of which: write + flush", per_event(n, write_flush)))

    capserv_text = open(os.path.join(folder, "capserv-text.log"), "w")
    text_observer = TextLogObserver(BufferedWriter(capserv_text, clock=Clock()))
    results.append(("twisted.logger -> capserv TextLogObserver (buffered)", per_event(n, logger_to([text_observer]))))
    capserv_json = open(os.path.join(folder, "capserv-json.log"), "w")
    json_observer = JSONLogObserver(BufferedWriter(capserv_json, clock=Clock()))
    results.append(("twisted.logger -> capserv JSONLogObserver (buffered)", per_event(n, logger_to([json_observer]))))
    results.append(("  of which: rendering the message (render_access)", per_event(n, lambda: render_access(event))))
    # How capserv logs the line: one of its observers alone gets the fields, without an event (log_connection).
    for name, observer in (("TextLogObserver", text_observer), ("JSONLogObserver", json_observer)):
        accesslog._connection_logger = Logger(
            namespace="capserv.tcp.UppercaseProtocol", observer=LogPublisher(observer)
        )
        publish = lambda: log_connection("127.0.0.1:54321", 0.00123, 64, 64, "end of input")  # noqa: E731
        results.append((f"capserv log_connection -> capserv {name}", per_event(n, publish)))
    flush_all()

    width = max(len(name) for name, _ in results)
    print(f"{n} events, best of 3; load: {os.getloadavg()[0]:.2f}")
    for name, micros in results:
        print(f"{name:{width}}  {micros:7.2f} us/event")
    for f in (text_file, json_file, raw, capserv_text, capserv_json):
        f.close()


if __name__ == "__main__":
    main()
