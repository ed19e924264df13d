"""
The names operators and embedders rely on stay where they are, whatever the
tree's layout: the log namespaces operators filter on, the plugin's target,
the log observers named on twistd's command line, the console script;
and every source module has a test module named after it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import capserv

TESTS = Path(__file__).resolve().parent.parent
SOURCE = Path(capserv.__file__).resolve().parent


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


#: Source modules whose tests are not in ``test_<name>.py``, each with why; None: no test module.
ELSEWHERE: dict[str, str | None] = {
    "capserv/__init__.py": "test_exports.py",  # re-exports the library's names, checked there
    "capserv/_version.py": None,  # one constant
}


def expected_test_modules(path: Path) -> set[str]:
    """
    The test modules that may hold ``path``'s tests: ``test_<name>.py``, <name> being
    the module's (a package's, for its ``__init__``) without a leading underscore, or,
    for a module private to a package, the package's.
    """
    name = path.parent.name if path.name == "__init__.py" else path.stem
    names = {f"test_{name.lstrip('_')}.py"}
    if path.name.startswith("_") and path.name != "__init__.py":
        names.add(f"test_{path.parent.name}.py")
    return names


class MirrorTests(SynchronousTestCase):
    """
    Tests mirror the code: every module of ``capserv/`` has its test module in
    tests/unit or tests/integration, named after it.
    """

    def test_every_module_has_a_test_module(self) -> None:
        """A module with code and no test module named after it (or in `ELSEWHERE`) fails."""
        tests = {path.name for folder in ("unit", "integration") for path in (TESTS / folder).glob("test_*.py")}
        missing = []
        for path in sorted(SOURCE.rglob("*.py")):
            key = path.relative_to(SOURCE.parent).as_posix()
            if key in ELSEWHERE:
                continue
            if path.name == "__init__.py" and not _defines_anything(path):
                continue
            if not expected_test_modules(path) & tests:
                missing.append(f"{key}: write tests/unit/test_{path.stem.lstrip('_')}.py (or integration/)")
        self.assertEqual(missing, [])

    def test_exceptions_are_current(self) -> None:
        """Each exception names a module that exists and, if any, a test module that exists."""
        for key, test_module in ELSEWHERE.items():
            self.assertTrue((SOURCE.parent / key).is_file(), key)
            if test_module is not None:
                self.assertTrue(any((TESTS / f / test_module).is_file() for f in ("unit", "integration")), test_module)


def _defines_anything(path: Path) -> bool:
    """Whether a package's ``__init__`` holds more than its docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)
