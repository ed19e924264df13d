"""
`capserv.daemon.rlimits`: the open-file limit is raised for --max-connections,
never above the hard limit and never lowered.
"""

from __future__ import annotations

import resource

from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.rlimits import raise_file_limit


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
