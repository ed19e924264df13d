"""
Tests for `capserv.endpoints.tls`: whether TLS can work, and the one line that says
what to install when it cannot.
"""

from __future__ import annotations

import sys

from twisted.trial.unittest import SynchronousTestCase

from capserv.endpoints.tls import TLS_INSTALL_HINT, tls_problem, tls_unavailable_message


class TLSDependencyTests(SynchronousTestCase):
    """
    `tls_problem` and the message built on it, with pyOpenSSL and
    service-identity present (the test extra installs them) and hidden.
    """

    def hide(self, module: str) -> None:
        """Make ``import module`` fail for the rest of the test."""
        self.patch(sys, "modules", {**sys.modules, module: None})

    def test_available_with_the_tls_extra(self) -> None:
        """
        With pyOpenSSL and service-identity installed there is no problem
        and no message.
        """
        self.assertIsNone(tls_problem())
        self.assertIsNone(tls_unavailable_message("--listen 'ssl:1'"))

    def test_missing_pyopenssl(self) -> None:
        """
        Without pyOpenSSL the message is one line naming what was given,
        what is missing, and the install command.
        """
        self.hide("OpenSSL.SSL")
        self.assertEqual(tls_problem(), "pyOpenSSL is not installed")
        self.assertEqual(
            tls_unavailable_message("--listen 'ssl:50443'"),
            "--listen 'ssl:50443': TLS needs pyOpenSSL and service-identity (pyOpenSSL is not installed); "
            "install them with: pip install 'capserv[tls]'",
        )

    def test_missing_service_identity(self) -> None:
        """
        Without service-identity (which hostname checks need) the message
        names it.
        """
        self.hide("service_identity")
        self.assertEqual(tls_problem(), "service-identity is not installed")
        message = tls_unavailable_message("--connect 'tls:h:1'")
        assert message is not None
        self.assertIn("service-identity is not installed", message)
        self.assertTrue(message.endswith(TLS_INSTALL_HINT))
        self.assertNotIn("\n", message)

    def test_broken_install(self) -> None:
        """
        A module that is present but fails to import with some other error
        (a pyOpenSSL older than its cryptography, say) is reported as
        broken, not raised.
        """
        import importlib

        from capserv.endpoints import tls

        real = importlib.import_module

        def import_module(name: str) -> object:
            if name == "OpenSSL.SSL":
                raise AttributeError("module 'lib' has no attribute 'X509_V_FLAG_NOTIFY_POLICY'")
            return real(name)

        self.patch(tls.importlib, "import_module", import_module)
        self.assertEqual(tls_problem(), "pyOpenSSL is installed but does not import")
