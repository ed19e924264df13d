"""
`capserv.tap`, the twistd plugin's target: it stays light to import.
(Its options: ``test_options.py``; its service: ``test_service.py``.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase


class ImportTests(SynchronousTestCase):
    """The plugin's module stays light."""

    def test_tap_does_not_import_twisted_web(self) -> None:
        """``import capserv.tap`` (what twistd loads for every capserv
        command) does not load twisted.web: the metrics site is imported
        only when --metrics is given."""
        import subprocess
        import sys

        code = "import capserv.tap, sys; print('twisted.web' in sys.modules, 'prometheus_client' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        self.assertEqual(out.stdout.split(), ["False", "False"])
