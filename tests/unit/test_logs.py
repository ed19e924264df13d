"""
`capserv.daemon.logs`: capserv's observers write where twistd's own would,
given twistd's ``--logfile`` and ``-n`` (`follow_twistd`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Callable

from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python import log as legacy
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon import logs


class DestinationTests(SynchronousTestCase):
    """`follow_twistd` then the observer factory: the file, stdout, or a refusal."""

    def setUp(self) -> None:
        self.addCleanup(logs.follow_twistd, None)
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def test_logfile_is_opened_and_rotated_on_usr1(self) -> None:
        """--logfile names the file; SIGUSR1 gets a handler instead of ending the process."""
        path = os.path.abspath(self.mktemp())
        logs.follow_twistd({"logfile": path, "nodaemon": True})
        out = logs._destination()
        self.addCleanup(out.close)  # type: ignore[attr-defined]
        self.assertIsInstance(out, LogFile)
        self.assertEqual(out.path, path)  # type: ignore[attr-defined]
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))

    def test_daemon_without_logfile_writes_twistd_log(self) -> None:
        """A daemon with no --logfile logs to twistd.log, as twistd does."""
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(folder)
        logs.follow_twistd({"logfile": None, "nodaemon": False})
        out = logs._destination()
        self.addCleanup(out.close)  # type: ignore[attr-defined]
        self.assertEqual(out.path, os.path.join(folder, "twistd.log"))  # type: ignore[attr-defined]

    def test_foreground_without_logfile_is_stdout(self) -> None:
        """-n with no --logfile (or --logfile=-): standard output, SIGUSR1 left alone."""
        for logfile in (None, "-"):
            logs.follow_twistd({"logfile": logfile, "nodaemon": True})
            self.assertIs(logs._destination(), sys.stdout)
        self.assertEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)

    def test_daemon_cannot_log_to_stdout(self) -> None:
        """--logfile=- without -n is refused in one line."""
        logs.follow_twistd({"logfile": "-", "nodaemon": False})
        with self.assertRaises(SystemExit) as caught:
            logs._destination()
        self.assertEqual(
            str(caught.exception),
            "capserv: a daemon cannot log to standard output (--logfile=-); add -n or name a file",
        )


def _legacy(publisher: LogPublisher, *message: str, **fields: object) -> None:
    """Publish ``message`` as twisted.python.log.msg does (the ports' way)."""
    legacy.LogPublisher(publisher, publisher).msg(*message, **fields)


class PortChatterTests(SynchronousTestCase):
    """
    Twisted's ports log their start and stop whatever ``noisy`` says;
    capserv's observers leave those lines out and keep every other.
    """

    CHATTER = (
        "UppercaseDatagramProtocol starting on 50007",
        "_QuietSite starting on 9150",
        "UppercaseFactory (TLS) starting on 50443",
        "UppercaseFactory starting on '/run/capserv.sock'",
        "(TCP Port 9150 Closed)",
        "(UDP Port 50007 Closed)",
        "(TLS Port 50443 Closed)",
        "(UNIX Port /run/capserv.sock Closed)",
        "(Port '/run/capserv-dgram.sock' Closed)",
    )
    KEPT = (
        "capserv stopped: 1 TCP connection served and 0 datagrams answered",
        "the pump starting on Monday",
        "(TCP Port 9150 Closed) and more",
    )

    def lines(self, factory: Callable[[], ILogObserver]) -> list[str]:
        logs.follow_twistd(None)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        publisher = LogPublisher(factory())
        for text in (*self.CHATTER, *self.KEPT):
            _legacy(publisher, text)
        _legacy(publisher, "(TCP Port 1 Closed)", isError=1)  # an error is never chatter
        Logger(namespace="capserv.listen", observer=publisher).info("{text} starting on {port}", text="x", port=1)
        return out.getvalue().splitlines()

    def test_json_lines(self) -> None:
        """json_lines writes neither start nor stop line of a port."""
        texts = [json.loads(line)["text"] for line in self.lines(logs.json_lines)]
        self.assertEqual(texts, [*self.KEPT, "(TCP Port 1 Closed)", "x starting on 1"])

    def test_text_lines(self) -> None:
        """text_lines likewise."""
        lines = self.lines(logs.text_lines)
        self.assertEqual(
            [line.split("] ", 1)[1] for line in lines], [*self.KEPT, "(TCP Port 1 Closed)", "x starting on 1"]
        )
