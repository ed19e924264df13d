"""
The twistd plugin: found by getPlugins, provides the right interfaces, and
listing plugins does not import capserv.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

from capserv import tap


class PluginTests(SynchronousTestCase):
    def plugin(self) -> object:
        found = [p for p in getPlugins(IServiceMaker) if p.tapname == "capserv"]
        self.assertEqual(len(found), 1, "the capserv plugin must be installed exactly once")
        return found[0]

    def test_interfaces(self) -> None:
        """The plugin provides IPlugin and IServiceMaker."""
        plugin = self.plugin()
        self.assertTrue(IPlugin.providedBy(plugin))
        self.assertTrue(IServiceMaker.providedBy(plugin))

    def test_points_at_tap(self) -> None:
        """The plugin's tapname is capserv and it points at capserv.tap."""
        plugin = self.plugin()
        self.assertIs(plugin.options, tap.Options)  # type: ignore[attr-defined]
        self.assertEqual(plugin.description.split()[0], "The")  # type: ignore[attr-defined]

    def test_listing_plugins_does_not_import_capserv(self) -> None:
        """Listing twistd's plugins does not import capserv (or a reactor)."""
        code = (
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [p.tapname for p in getPlugins(IServiceMaker)]\n"
            "assert 'capserv' in names, names\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'capserv'))\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
        self.assertEqual(out.stdout.split("\n")[:2], ["[]", "False"])
