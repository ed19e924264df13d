"""
`capserv.daemon.logs`: capserv's observers write where twistd's own would,
given twistd's ``--logfile`` and ``-n`` (`follow_twistd`).
"""

from __future__ import annotations

import os
import signal
import sys

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
