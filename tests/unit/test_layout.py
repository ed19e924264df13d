"""
The names operators and embedders rely on stay where they are, whatever the
tree's layout: the log namespaces operators filter on, the plugin's target,
the log observers named on twistd's command line, the console script.
"""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

import capserv


class PinnedNamesTests(SynchronousTestCase):
    """
    Moving a module never moves a name someone outside capserv typed.
    """

    def test_log_namespaces(self) -> None:
        """
        Each logger's namespace is the one docs/operations and operators'
        filters use, not the module it happens to live in.
        """
        from capserv.daemon import listen, service, system, workers
        from capserv.native import _common
        from capserv.protocols import accesslog, limits, udp

        self.assertEqual(limits._log.namespace, "capserv.tcp.UppercaseFactory")
        self.assertEqual(udp._log.namespace, "capserv.udp.UppercaseDatagramProtocol")
        self.assertEqual(accesslog._connection_logger.namespace, "capserv.tcp.UppercaseProtocol")
        self.assertEqual(listen._log.namespace, "capserv.listen")
        self.assertEqual(system._rlimit_log.namespace, "capserv.rlimits")
        self.assertEqual(service._log.namespace, "capserv.service.CapservService")
        self.assertEqual(system._notify_log.namespace, "capserv.sdnotify.Notifier")
        self.assertEqual(workers._pool_log.namespace, "capserv.workers.WorkerPool")
        self.assertEqual(workers._orphan_log.namespace, "capserv.workers.OrphanWatch")
        self.assertEqual(_common._log.namespace, "capserv.native")

    def test_entry_points(self) -> None:
        """
        The plugin's target, the log observers, the client API and command,
        and the native transports import at their documented addresses.
        """
        tap = importlib.import_module("capserv.tap")
        self.assertTrue(callable(tap.makeService) and tap.Options)
        logs = importlib.import_module("capserv.logs")
        self.assertTrue(callable(logs.json_lines) and callable(logs.text_lines))
        self.assertTrue(callable(importlib.import_module("capserv.client.command").main))
        self.assertTrue(importlib.import_module("capserv.client").tcp_request)
        self.assertTrue(importlib.import_module("capserv.native").NativeSocketEndpoint)
        for name in capserv.__all__:
            self.assertTrue(hasattr(capserv, name), name)
