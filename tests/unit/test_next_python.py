"""
Ready for the next Python: no asyncio event-loop policy and no "current"
loop set anywhere in the tree (Python 3.14 deprecates the policy system,
3.16 removes it), and a Twisted floor on 3.14 that runs there.
"""

from __future__ import annotations

import ast
import io
import itertools
import tokenize
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]

# Names the policy system's deprecation retires (comments and strings may say them).
_RETIRING = {"set_event_loop", "set_event_loop_policy", "get_event_loop_policy", "get_event_loop", "EventLoopPolicy"}


def _retiring_uses(source: str) -> list[int]:
    """The lines of ``source`` whose code names a retiring asyncio function
    or calls ``uvloop.install``."""
    names = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.NAME]
    lines = [t.start[0] for t in names if t.string in _RETIRING]
    lines += [b.start[0] for a, b in itertools.pairwise(names) if (a.string, b.string) == ("uvloop", "install")]
    return sorted(lines)


def _setup_keywords() -> dict[str, object]:
    """The literal keywords of setup.py's ``setup(...)`` call, read without
    running it (setuptools is not in every test environment)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            return {
                k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg in ("install_requires", "classifiers")
            }
    raise AssertionError("setup.py has no setup(...) call")


def _twisted_allowed(version: str, python: str) -> bool:
    """Whether setup.py's requirements let ``version`` of Twisted install on ``python``."""
    environment = {"python_version": python, "python_full_version": python + ".0"}
    requires = _setup_keywords()["install_requires"]
    assert isinstance(requires, list)
    twisted = [Requirement(line) for line in requires if Requirement(line).name.lower() == "twisted"]
    applicable = [r for r in twisted if r.marker is None or Marker(str(r.marker)).evaluate(environment)]
    return all(r.specifier.contains(version) for r in applicable)


class NextPythonTests(SynchronousTestCase):
    """
    What Python 3.14 and later ask of capserv's tree and packaging.
    """

    def test_no_event_loop_policy_or_current_loop(self) -> None:
        """
        No module of capserv, its tests, its benchmarks or the docs' examples
        uses an event-loop policy, ``uvloop.install()``, or sets or asks for
        the current loop: each makes its loop and passes it.
        """
        found = []
        for folder in ("capserv", "tests", "bench", "docs/examples", "twisted_plugins"):
            for path in sorted((ROOT / folder).rglob("*.py")):
                source = path.read_text(encoding="utf-8")
                found += [f"{path.relative_to(ROOT)}:{number}" for number in _retiring_uses(source)]
        self.assertEqual(found, [])

    def test_retiring_uses_found(self) -> None:
        """
        The scan above finds each retiring use in code, and not the names
        in comments or strings.
        """
        source = (
            "import asyncio, uvloop\n"
            "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # set_event_loop\n"
            "uvloop.install()\n"
            "loop = asyncio.get_event_loop()\n"
            "'asyncio.set_event_loop(loop)'\n"
        )
        self.assertEqual(_retiring_uses(source), [2, 2, 3, 4])

    def test_twisted_floor_on_python_314(self) -> None:
        """
        On Python 3.14 only Twisted 26.10 or later installs (24.3's asyncio
        reactor asks ``get_event_loop()`` for a loop, which 3.14 refuses);
        the older floors stay where they were.
        """
        self.assertFalse(_twisted_allowed("26.4.0", "3.14"))
        self.assertTrue(_twisted_allowed("26.10.0", "3.14"))
        self.assertTrue(_twisted_allowed("24.3.0", "3.13"))
        self.assertFalse(_twisted_allowed("23.10.0", "3.13"))
        self.assertTrue(_twisted_allowed("23.10.0", "3.10"))

    def test_classifiers_name_every_python(self) -> None:
        """
        The classifiers name each Python from 3.10 to 3.14.
        """
        classifiers = _setup_keywords()["classifiers"]
        assert isinstance(classifiers, list)
        named = [c.rsplit(" :: ", 1)[1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")]
        self.assertEqual(named, ["3.10", "3.11", "3.12", "3.13", "3.14"])
