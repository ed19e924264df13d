"""
`capserv.daemon.system`: the open-file limit is raised for --max-connections,
never above the hard limit and never lowered; twistd's own options are
checked before anything starts. (sd_notify: tests/integration/test_drain.py.)
"""

from __future__ import annotations

import os
import resource

from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.system import TwistdOptionError, check_twistd, raise_file_limit


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
