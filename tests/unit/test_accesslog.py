"""
In-memory tests for `capserv.protocols.accesslog`: the per-connection line, the same text and
fields as twisted.logger's own observers write, in batches.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, UppercaseFactory
from capserv.daemon.logs import json_lines, text_lines
from capserv.protocols.accesslog import (
    ACCESS_FORMAT,
    BufferedWriter,
    JSONLogObserver,
    TextLogObserver,
    event_as_json,
    flush_all,
    render_access,
)

FIELDS: list[dict[str, Any]] = [
    {"peer": "127.0.0.1:54321", "duration": 0.00123, "bytes_in": 64, "bytes_out": 64, "reason": "end of input"},
    {
        "peer": "[::1]:1",
        "duration": 12345.6789,
        "bytes_in": 0,
        "bytes_out": 10**12,
        "reason": 'idle for 300s, "quoted"',
    },
    {
        "peer": "unix:/run/caps\u00e9rv.sock",
        "duration": 0.0,
        "bytes_in": 3,
        "bytes_out": 9,
        "reason": "caf\u00e9 \u2603",
    },
]


def to_the_microsecond(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON access record with its time and duration rounded as JSONLogObserver writes them."""
    return {**record, "time": round(record["time"], 6), "duration": round(record["duration"], 6)}


def logged(observers: list[Any], fields: dict[str, Any], when: float = 1795822516.25) -> None:
    """Log one access event, as UppercaseProtocol does, at a fixed time."""
    log = Logger(namespace="capserv.tcp.UppercaseProtocol", observer=LogPublisher(*observers))
    log.emit(LogLevel.info, ACCESS_FORMAT, log_time=when, **fields)


class AccessLogTests(SynchronousTestCase):
    def test_render_access_is_twisteds_formatting(self) -> None:
        """render_access gives exactly the text twisted.logger's formatEvent gives for the access format."""
        for fields in FIELDS:
            event = {"log_format": ACCESS_FORMAT, **fields}
            assert render_access(event) == formatEvent(event)

    def test_text_observer_writes_what_twisteds_writes(self) -> None:
        """TextLogObserver's access line is byte for byte textFileLogObserver's (time stamp, system, message)."""
        for fields in FIELDS:
            ours, theirs = io.StringIO(), io.StringIO()
            observer = TextLogObserver(ours, clock=Clock(), interval=0)
            logged([observer, textFileLogObserver(theirs)], fields)
            assert ours.getvalue() == theirs.getvalue()
            assert ours.getvalue().endswith(f"[capserv.tcp.UppercaseProtocol#info] {render_access(fields)}\n")

    def test_text_observer_other_events_and_cached_time_stamps(self) -> None:
        """Other events are written as Twisted writes them; time stamps stay right across seconds (the cache)."""
        ours, theirs = io.StringIO(), io.StringIO()
        observer = TextLogObserver(ours, clock=Clock(), interval=0)
        log = Logger(namespace="capserv.listen", observer=LogPublisher(observer, textFileLogObserver(theirs)))
        for when in (100.2, 100.9, 101.0, 99.5, 86400 * 365.25 * 30):
            log.emit(LogLevel.warn, "Listening on {address}", address="127.0.0.1:50007", log_time=when)
            logged([observer, textFileLogObserver(theirs)], FIELDS[0], when=when)
        assert ours.getvalue() == theirs.getvalue()
        assert ours.getvalue().count("\n") == 10

    def test_json_observer_access_line_is_event_as_json(self) -> None:
        """
        JSONLogObserver's fast access line is the object event_as_json writes
        for the same event: the rendered text, level, namespace, time and the
        fields (time and duration to the microsecond), and nothing unpersistable.
        """
        for fields in FIELDS:
            ours, reference = io.StringIO(), io.StringIO()
            observer = JSONLogObserver(ours, clock=Clock(), interval=0)

            logged([observer, lambda event, out=reference: out.write(event_as_json(event))], fields)
            mine = json.loads(ours.getvalue())
            assert mine == to_the_microsecond(json.loads(reference.getvalue()))
            assert mine["text"] == render_access(fields)
            assert mine["level"] == "info"
            assert "unpersistable" not in ours.getvalue()

    def test_json_observer_escapes_repeated_and_many_reasons(self) -> None:
        """
        One observer's lines stay event_as_json's as reasons repeat (escaped
        once, remembered) and as more distinct reasons come than it remembers.
        """
        ours, reference = io.StringIO(), io.StringIO()
        observer = JSONLogObserver(ours, clock=Clock(), interval=0)
        many = [{**FIELDS[0], "reason": f'lost: "{n}"'} for n in range(300)]
        for fields in [*FIELDS, *FIELDS, *many, *many[:5]]:
            logged([observer, lambda event, out=reference: out.write(event_as_json(event))], fields)
        mine, theirs = ours.getvalue().splitlines(), reference.getvalue().splitlines()
        assert len(mine) == len(theirs) == 2 * len(FIELDS) + 305
        assert [json.loads(line) for line in mine] == [to_the_microsecond(json.loads(line)) for line in theirs]

    def test_json_observer_other_events(self) -> None:
        """Events other than the access line carry their text and plain fields, written at once."""
        ours = io.StringIO()
        observer = JSONLogObserver(ours, clock=Clock())
        log = Logger(namespace="capserv.tcp", observer=observer)
        log.warn("Refused connection from {peer}: {limit} reached", peer="192.0.2.1:1", limit="max_connections")
        event = json.loads(ours.getvalue())
        assert event["limit"] == "max_connections" and event["level"] == "warn"
        assert event["text"] == "Refused connection from 192.0.2.1:1: max_connections reached"
        assert "unpersistable" not in ours.getvalue()

    def test_access_lines_wait_for_the_timer_and_other_events_flush_them_in_order(self) -> None:
        """
        Access lines are written once the flush interval passes, not before;
        another event writes the waiting lines first, then itself; no timer is
        left once the buffer is empty.
        """
        clock = Clock()
        out = io.StringIO()
        observer = TextLogObserver(out, clock=clock, interval=1.0)
        logged([observer], FIELDS[0])
        logged([observer], FIELDS[1])
        assert out.getvalue() == ""
        assert observer.writer.waiting > 0
        clock.advance(0.9)
        assert out.getvalue() == ""
        clock.advance(0.1)
        assert out.getvalue().count("closed after") == 2
        assert clock.getDelayedCalls() == []
        logged([observer], FIELDS[2])
        Logger(namespace="capserv", observer=observer).error("something {what}", what="bad")
        lines = out.getvalue().splitlines()
        assert "closed after" in lines[2] and "something bad" in lines[3]
        assert clock.getDelayedCalls() == []

    def test_items_wait_unrendered_and_are_rendered_together_in_order(self) -> None:
        """
        Items added wait unrendered; consecutive ones of one renderer are rendered in one call, in order
        with the text around them, when their batch is written.
        """
        clock, out, calls = Clock(), io.StringIO(), []

        def render(items: list[str]) -> str:
            calls.append(list(items))
            return "".join(items)

        writer = BufferedWriter(out, clock, interval=1.0)
        writer.write("first\n")
        writer.add(render, "second\n")
        writer.add(render, "third\n")
        writer.write("fourth\n")
        writer.add(render, "fifth\n")
        assert calls == [] and writer.waiting > len("first\nfourth\n")
        writer.write("sixth\n", urgent=True)
        assert out.getvalue() == "first\nsecond\nthird\nfourth\nfifth\nsixth\n"
        assert calls == [["second\n", "third\n"], ["fifth\n"]]

    def test_a_full_buffer_is_written_at_once(self) -> None:
        """Past the buffer's limit, what waits is written without waiting for the timer."""
        clock = Clock()
        out = io.StringIO()
        observer = TextLogObserver(BufferedWriter(out, clock, interval=1.0, limit=1000))
        for _ in range(20):
            logged([observer], FIELDS[0])
        assert out.getvalue().count("\n") >= 9
        assert observer.writer.waiting < 1000

    def test_flush_all(self) -> None:
        """flush_all writes what every writer holds (the daemon's stop) and cancels their timers."""
        clock = Clock()
        first, second = io.StringIO(), io.StringIO()
        a, b = TextLogObserver(first, clock=clock), JSONLogObserver(second, clock=clock)
        logged([a, b], FIELDS[0])
        assert (first.getvalue(), second.getvalue()) == ("", "")
        flush_all()
        assert "closed after" in first.getvalue() and json.loads(second.getvalue())["bytes_in"] == 64
        logged([a, b], FIELDS[1])
        flush_all()
        assert first.getvalue().count("\n") == 2
        assert clock.getDelayedCalls() == []

    def test_a_broken_log_file_does_not_raise(self) -> None:
        """Writing to a closed file is dropped, never an exception into the protocol."""
        out = io.StringIO()
        observer = TextLogObserver(out, clock=Clock(), interval=0)
        out.close()
        logged([observer], FIELDS[0])

    def test_writes_from_another_thread_start_no_timer(self) -> None:
        """A line from a thread other than the reactor's waits for the next flush instead of touching the clock."""
        clock = Clock()
        out = io.StringIO()
        writer = BufferedWriter(out, clock)
        thread = threading.Thread(target=writer.write, args=("from a thread\n",))
        thread.start()
        thread.join()
        assert clock.getDelayedCalls() == [] and writer.waiting
        writer.flush()
        assert out.getvalue() == "from a thread\n"

    def test_the_protocols_close_line_takes_the_fast_path(self) -> None:
        """UppercaseProtocol's close line is the access format (by identity), with the fields the observers need."""
        from twisted.internet.testing import StringTransport

        from capserv.protocols.addresses import describe

        clock = Clock()
        out = io.StringIO()
        observer = TextLogObserver(out, clock=clock, interval=0)
        factory = UppercaseFactory(CapservConfig(), clock=clock)
        events: list[dict[str, Any]] = []
        from twisted.internet.address import IPv4Address
        from twisted.logger import globalLogPublisher

        def keep(event: dict[str, Any]) -> None:
            if event.get("log_format") is ACCESS_FORMAT:
                events.append(event)
                observer(event)

        globalLogPublisher.addObserver(keep)
        try:
            peer = IPv4Address("TCP", "192.0.2.7", 4000)
            protocol = factory.buildProtocol(peer)
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=peer))
            protocol.dataReceived(b"abc")
            protocol.connectionLost()
        finally:
            globalLogPublisher.removeObserver(keep)
        (event,) = events
        assert (event["peer"], event["bytes_in"], event["bytes_out"]) == (describe(peer), 3, 3)
        line = f"{describe(peer)} closed after 0.000s: 3 bytes in, 3 bytes out (closed by peer)\n"
        assert out.getvalue().endswith(line)

    def test_logger_factories(self) -> None:
        """capserv.daemon.logs' factories for twistd --logger build capserv's observers."""
        assert isinstance(json_lines(), JSONLogObserver)
        assert isinstance(text_lines(), TextLogObserver)

    def test_log_connection_publishes_what_logger_info_would(self) -> None:
        """
        log_connection's event has the keys and values Logger.info's would
        (fields, level, namespace, format), with a current time stamp, and
        reaches the global publisher's observers.
        """
        import time

        from twisted.logger import globalLogPublisher

        from capserv.protocols.accesslog import log_connection

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            before = time.time()
            log_connection(**FIELDS[0])
            Logger(namespace="capserv.tcp.UppercaseProtocol").info(ACCESS_FORMAT, **FIELDS[0])
        finally:
            globalLogPublisher.removeObserver(events.append)
        mine, theirs = (e for e in events if e.get("log_format") is ACCESS_FORMAT)
        assert set(mine) == set(theirs)
        ignore = {"log_time", "log_logger", "log_source", "time", "log_legacy"}  # the last two: the legacy bridge's
        assert {k: v for k, v in mine.items() if k not in ignore} == {
            k: v for k, v in theirs.items() if k not in ignore
        }
        assert before <= mine["log_time"] <= theirs["log_time"]
        assert mine["log_source"] is None

    def test_a_sole_capserv_observer_gets_the_same_line_without_an_event(self) -> None:
        """
        When capserv's observer is the publisher's only one, log_connection
        hands it the fields (no event; an address peer described when the
        line is rendered) and it writes the line the event would give; with
        another observer beside it, both get the event, its peer as text.
        """
        from twisted.internet.address import IPv6Address

        from capserv.protocols import accesslog

        addressed = {**FIELDS[0], "peer": IPv6Address("TCP", "::1", 4000)}  # described when rendered
        for kind in (TextLogObserver, JSONLogObserver):
            for fields in [*FIELDS, addressed]:
                alone, beside, reference = io.StringIO(), io.StringIO(), io.StringIO()
                events: list[dict[str, Any]] = []
                sole = kind(alone, clock=Clock(), interval=0)
                one_of_two = kind(beside, clock=Clock(), interval=0)
                saved = accesslog._connection_logger
                try:
                    for observers in ([sole], [one_of_two, events.append]):
                        accesslog._connection_logger = Logger(
                            namespace=saved.namespace, observer=LogPublisher(*observers)
                        )
                        accesslog.log_connection(**fields)
                finally:
                    accesslog._connection_logger = saved
                (event,) = events
                one_of_two(event)  # written twice by it: once as the second observer, once again here
                kind(reference, clock=Clock(), interval=0)(event)
                assert beside.getvalue() == reference.getvalue() * 2
                if kind is JSONLogObserver:
                    mine, theirs = json.loads(alone.getvalue()), json.loads(reference.getvalue())
                    assert abs(mine.pop("time") - theirs.pop("time")) < 5.0
                    assert mine == theirs
                else:  # the time stamp's second may differ
                    assert alone.getvalue().split(" ", 1)[1] == reference.getvalue().split(" ", 1)[1]

    def test_a_line_logged_at_any_line_of_add_loses_nothing(self) -> None:
        """
        An urgent line written from inside `add`, at any of its lines (as a
        signal handler logs between any two bytecodes), loses no item and
        repeats none.
        """
        import sys

        code = BufferedWriter.add.__code__
        lines: list[int] = []  # the lines a second add runs, found by a first pass

        def record(frame: Any, event: str, arg: Any) -> Any:
            if event == "line":
                lines.append(frame.f_lineno)
            return record

        previous = sys.gettrace()
        probe = BufferedWriter(io.StringIO(), Clock(), interval=1.0)
        probe.add("".join, "a\n")
        sys.settrace(lambda frame, event, arg: record if frame.f_code is code else None)
        try:
            probe.add("".join, "b\n")
        finally:
            sys.settrace(previous)
        assert len(lines) >= 3
        for target in lines:
            out = io.StringIO()
            writer = BufferedWriter(out, Clock(), interval=1.0)

            def render(items: list[str]) -> str:
                return "".join(items)

            writer.add(render, "a\n")
            fired: list[int] = []

            def local(
                frame: Any,
                event: str,
                arg: Any,
                target: int = target,
                writer: BufferedWriter = writer,
                fired: list[int] = fired,
            ) -> Any:
                if event == "line" and frame.f_lineno == target and not fired:
                    fired.append(target)
                    writer.write("SIGNAL\n", urgent=True)
                return local

            def tracer(frame: Any, event: str, arg: Any) -> Any:
                return local if frame.f_code is code else None

            sys.settrace(tracer)
            try:
                writer.add(render, "b\n")
            finally:
                sys.settrace(previous)
            writer.flush()
            assert fired == [target]
            assert sorted(out.getvalue().splitlines()) == ["SIGNAL", "a", "b"], target

    def test_the_shortcut_leaves_fields_not_an_event(self) -> None:
        """
        With capserv's observer alone, what waits in its writer is the fields
        tuple for its renderer (no event was built), written in order around
        an urgent event.
        """
        from capserv.protocols import accesslog

        out = io.StringIO()
        sole = JSONLogObserver(out, clock=Clock(), interval=1.0)
        saved = accesslog._connection_logger
        accesslog._connection_logger = Logger(namespace=saved.namespace, observer=LogPublisher(sole))
        try:
            accesslog.log_connection(**FIELDS[0])
            ((render, item),) = sole.writer._buffer  # type: ignore[misc]
            assert render == sole._render_fields and type(item) is tuple and item[:5] == tuple(FIELDS[0].values())
            Logger(namespace="capserv.listen", observer=LogPublisher(sole)).warn("stopping")
            accesslog.log_connection(**FIELDS[1])
            sole.writer.flush()
        finally:
            accesslog._connection_logger = saved
        texts = [json.loads(line)["text"] for line in out.getvalue().splitlines()]
        assert texts == [render_access(FIELDS[0]), "stopping", render_access(FIELDS[1])]

    def test_a_line_logged_while_the_writer_writes_neither_blocks_nor_repeats(self) -> None:
        """
        A log line written from inside a write (as Twisted's signal handlers
        log, between any two bytecodes of the main thread) neither deadlocks
        nor writes any line twice.
        """
        clock = Clock()
        written: list[str] = []

        class Interrupted:
            def __init__(self) -> None:
                self.writer: BufferedWriter | None = None
                self.interrupted = False

            def write(self, text: str) -> None:
                if not self.interrupted and self.writer is not None:
                    self.interrupted = True
                    self.writer.write("Received SIGTERM, shutting down.\n", urgent=True)
                written.append(text)

            def flush(self) -> None:
                pass

        out = Interrupted()
        writer = BufferedWriter(out, clock)
        out.writer = writer
        writer.write("a closed after...\n")
        writer.write("b closed after...\n")
        done = threading.Event()

        def flush() -> None:
            writer.flush()
            done.set()

        thread = threading.Thread(target=flush, daemon=True)
        thread.start()
        assert done.wait(5), "the writer deadlocked"
        lines = "".join(written).splitlines()
        assert sorted(lines) == sorted(["a closed after...", "b closed after...", "Received SIGTERM, shutting down."])
        assert writer.waiting == 0 and clock.getDelayedCalls() == []

    def test_a_line_refused_by_a_file_mid_write_is_kept_for_the_next_write(self) -> None:
        """
        A file object that is mid-write refuses a second write with RuntimeError
        (``reentrant call``: a signal handler logging while ``write`` runs); that
        line waits for the next write instead of being lost.
        """
        written: list[str] = []

        class MidWrite:
            def __init__(self) -> None:
                self.writer: BufferedWriter | None = None
                self.busy = False

            def write(self, text: str) -> None:
                if self.busy:
                    raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stdout>'>")
                self.busy = True
                try:
                    if self.writer is not None and not written:
                        self.writer.write("Received SIGTERM, shutting down.\n", urgent=True)
                    written.append(text)
                finally:
                    self.busy = False

            def flush(self) -> None:
                pass

        out = MidWrite()
        writer = BufferedWriter(out, Clock())
        out.writer = writer
        writer.write("listening\n", urgent=True)
        assert "".join(written) == "listening\n"
        assert writer.waiting > 0
        writer.write("capserv stopped\n", urgent=True)
        assert "".join(written).splitlines() == ["listening", "Received SIGTERM, shutting down.", "capserv stopped"]
        assert writer.waiting == 0

    def test_flush_gives_up_on_a_writer_another_thread_holds(self) -> None:
        """flush (what runs at stop and at exit) returns within about a second if another thread holds the writer."""
        out = io.StringIO()
        writer = BufferedWriter(out, Clock())
        writer.write("waiting\n")
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with writer._lock:
                held.set()
                release.wait(10)

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        assert held.wait(5)
        try:
            writer.flush()  # returns instead of waiting for the other thread
            assert out.getvalue() == ""
        finally:
            release.set()
            thread.join(5)
        writer.flush()
        assert out.getvalue() == "waiting\n"
