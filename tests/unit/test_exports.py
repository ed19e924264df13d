"""
The public surface: each public module's ``__all__`` is exactly the names
docs/api.rst documents for it, so nothing is exported undocumented and
nothing documented is missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig, ConfigError
from capserv.protocols.config import _Changes

_API = Path(__file__).resolve().parents[2] / "docs" / "api.rst"
_PUBLIC = ("capserv", "capserv.client", "capserv.native", "capserv.endpoints.native", "capserv.logs", "capserv.tap")
_DIRECTIVE = re.compile(r"^\.\. (currentmodule|auto(?:class|function|data|exception|attribute))::\s*(\S+)", re.M)


def documented(text: str) -> dict[str, set[str]]:
    """
    The names an api.rst text documents, per module: each ``auto*`` directive
    after a ``currentmodule`` names one attribute of that module.

    :param text: the reStructuredText.
    :return: module name to the set of names documented under it.
    """
    names: dict[str, set[str]] = {}
    module = None
    for directive, argument in _DIRECTIVE.findall(text):
        if directive == "currentmodule":
            module = argument
            names.setdefault(module, set())
        elif module is not None:
            names[module].add(argument)
    return names


class ExportsTests(SynchronousTestCase):
    """Each public module's ``__all__`` against docs/api.rst."""

    def test_parser(self) -> None:
        """The parser reads names per module, and only after a module is named."""
        lines = [
            ".. autoclass:: Stray",
            ".. currentmodule:: m",
            ".. autoclass:: A",
            "   :no-members:",
            ".. autofunction:: f",
        ]
        text = "\n\n".join(lines)
        self.assertEqual(documented(text), {"m": {"A", "f"}})

    def test_every_public_module_documented(self) -> None:
        """docs/api.rst has a section for each public module and for nothing else."""
        self.assertEqual(set(documented(_API.read_text(encoding="utf-8"))), set(_PUBLIC))

    def test_all_is_documented_api(self) -> None:
        """Each public module exports exactly what docs/api.rst documents for it."""
        docs = documented(_API.read_text(encoding="utf-8"))
        for name in _PUBLIC:
            module = importlib.import_module(name)
            exported = set(module.__all__)
            with self.subTest(module=name):
                self.assertEqual(
                    (sorted(exported - docs[name]), sorted(docs[name] - exported)),
                    ([], []),
                    f"{name}: (exported but undocumented, documented but not exported)",
                )

    def test_exports_importable(self) -> None:
        """Every exported name is there to import."""
        for name in _PUBLIC:
            module = importlib.import_module(name)
            for attribute in module.__all__:
                self.assertTrue(hasattr(module, attribute), f"{name}.{attribute}")

    def test_datagram_state_exported(self) -> None:
        """The shared UDP state the protocol's docstring says to build is importable from capserv."""
        import capserv
        from capserv.protocols.udp import DatagramState

        self.assertIs(capserv.DatagramState, DatagramState)


class ConfigSurfaceTests(SynchronousTestCase):
    """`CapservConfig` is built by name, and `CapservConfig.replace` takes only its fields."""

    def test_keyword_only(self) -> None:
        """A positional value is refused: seventeen-odd fields by position invite a silent mix-up."""
        with self.assertRaises(TypeError):
            CapservConfig("utf-8")  # type: ignore[misc]

    def test_replace_unknown_field(self) -> None:
        """replace with a name that is not a field fails naming it and listing the fields."""
        with self.assertRaises(ConfigError) as raised:
            CapservConfig().replace(no_such_field=1)  # type: ignore[call-arg]
        self.assertEqual(raised.exception.field, "no_such_field")
        self.assertIn("idle_timeout", str(raised.exception))

    def test_replace_validates(self) -> None:
        """replace changes the named fields and checks the values again."""
        self.assertEqual(CapservConfig().replace(idle_timeout=60.0).idle_timeout, 60.0)
        with self.assertRaises(ConfigError):
            CapservConfig().replace(idle_timeout=-1.0)

    def test_replace_types_every_field(self) -> None:
        """The type checker's list of replace's names is exactly the fields."""
        self.assertEqual(set(_Changes.__annotations__), {field.name for field in dataclasses.fields(CapservConfig)})
