"""
`capserv.daemon.system`: the open-file limit is raised for --max-connections,
never above the hard limit and never lowered; twistd's own options are
checked before anything starts; sd_notify sends one datagram (to a UNIX
socket in a temporary folder: no network).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import tempfile

from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.system import Notifier, TwistdOptionError, check_twistd, notify_address, raise_file_limit


class FileLimitTests(SynchronousTestCase):
    """raise_file_limit moves only the soft limit, and only up."""

    def setUp(self) -> None:
        self.original = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, self.original)

    def test_raises_towards_the_wanted_count(self) -> None:
        """A soft limit below the wanted count is raised to it (within the hard limit)."""
        soft, hard = self.original
        if soft == resource.RLIM_INFINITY:
            soft = 4096
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        wanted = 512 if hard == resource.RLIM_INFINITY else min(512, hard)
        self.assertEqual(raise_file_limit(wanted), wanted)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (wanted, hard))

    def test_never_above_the_hard_limit(self) -> None:
        """Asking for more than the hard limit gives the hard limit."""
        _, hard = self.original
        if hard == resource.RLIM_INFINITY:
            hard = 65536
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        self.assertEqual(raise_file_limit(hard * 2), hard)

    def test_never_lowered(self) -> None:
        """A soft limit already above the wanted count is left alone."""
        soft, _ = self.original
        self.assertEqual(raise_file_limit(1), soft)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), self.original)


class TwistdOptionTests(SynchronousTestCase):
    """twistd's own options, checked by capserv before anything starts (the system tests run real twistd)."""

    def test_another_user_or_group_needs_root(self) -> None:
        """--uid/--gid other than this user's are refused unless root, naming the option."""
        import pwd

        self.patch(pwd, "getpwuid", lambda uid: None)  # whichever users this machine has
        self.patch(os, "geteuid", lambda: 1000)
        self.patch(os, "getuid", lambda: 1000)
        self.patch(os, "getgid", lambda: 1000)
        check_twistd({"nodaemon": True, "uid": 1000, "gid": 1000})
        for option, ids in (("--uid=0", {"uid": 0}), ("--gid=0", {"gid": 0})):
            with self.assertRaises(TwistdOptionError) as caught:
                check_twistd({"nodaemon": True, **ids})
            self.assertTrue(str(caught.exception).startswith(f"{option}: only root can switch"))
        self.patch(os, "geteuid", lambda: 0)
        check_twistd({"nodaemon": True, "uid": 0, "gid": 0})

    def test_uid_number_of_no_user_is_named(self) -> None:
        """A --uid number no user has is one line before anything starts (twistd failed after binding)."""
        import pwd

        unused = next(n for n in range(54321, 60000) if n not in {entry.pw_uid for entry in pwd.getpwall()})
        with self.assertRaises(TwistdOptionError) as caught:
            check_twistd({"nodaemon": True, "uid": unused})
        self.assertTrue(str(caught.exception).startswith(f"--uid={unused}: no user has this number"))
        check_twistd({"nodaemon": True, "uid": os.getuid()})

    def test_daemon_default_log_file_is_checked(self) -> None:
        """Without --logfile a daemon logs to twistd.log here: a folder of that name is named."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            os.mkdir(os.path.join(folder, "twistd.log"))
            self.patch(os, "getcwd", lambda: folder)
            check_twistd({"nodaemon": True})
            with self.assertRaises(TwistdOptionError) as caught:
                check_twistd({"nodaemon": False})
        self.assertIn("--logfile=twistd.log:", str(caught.exception))


class NotifierTests(SynchronousTestCase):
    """`capserv.daemon.system`: one datagram to the socket NOTIFY_SOCKET names."""

    def test_addresses(self) -> None:
        """A path as it is, an abstract name's @ as a NUL byte; nothing else."""
        self.assertEqual(notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}), "/run/systemd/notify")
        self.assertEqual(notify_address({"NOTIFY_SOCKET": "@capserv/notify"}), b"\0capserv/notify")
        self.assertIsNone(notify_address({}))
        self.assertIsNone(notify_address({"NOTIFY_SOCKET": ""}))
        self.assertIsNone(notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}))

    def receiver(self, address: str | bytes) -> socket.socket:
        """A datagram socket in systemd's place, closed after the test."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def test_sends_one_datagram_to_a_path(self) -> None:
        """The fields become NAME=value lines in one datagram."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "notify")
        receiver = self.receiver(path)
        notifier = Notifier(notify_address({"NOTIFY_SOCKET": path}))
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.notify(READY="1", STATUS="Serving"))
        self.assertEqual(receiver.recv(4096), b"READY=1\nSTATUS=Serving\n")

    def test_abstract_socket(self) -> None:
        """An @name reaches the abstract socket of that name (Linux)."""
        name = f"capserv-test-{os.getpid()}-{id(self)}"
        try:
            receiver = self.receiver(b"\0" + name.encode())
        except OSError:
            self.skipTest("no abstract UNIX sockets here")
        Notifier(notify_address({"NOTIFY_SOCKET": "@" + name})).notify(STOPPING="1")
        self.assertEqual(receiver.recv(4096), b"STOPPING=1\n")

    def test_nothing_without_the_variable(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
        notifier = Notifier(notify_address({}))
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.notify(READY="1"))

    def test_a_failure_is_logged_not_raised(self) -> None:
        """A socket that is not there is one warning; the service goes on."""
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.assertFalse(Notifier("/nonexistent/notify").notify(READY="1"))
        self.assertEqual(len([line for line in lines if "Could not tell systemd READY" in line]), 1, lines)
