"""
Whether TLS can work here, and the one line that says what to install when
it cannot.

TLS in Twisted needs pyOpenSSL and service-identity, which capserv installs
only with its ``tls`` extra.  Without them Twisted fails late and in its own
words (``name 'optionsForClientTLS' is not defined``, ``No module named
'OpenSSL'``); capserv asks first, with `tls_problem`, and says what to do.
Used by ``capserv-client`` for ``tls:``/``ssl:`` connect strings, and meant
for the daemon's ``ssl:`` listen strings.
"""

from __future__ import annotations

import importlib

__all__ = ["TLS_INSTALL_HINT", "tls_available", "tls_problem", "tls_unavailable_message"]

#: What to run to get TLS.
TLS_INSTALL_HINT = "pip install 'capserv[tls]'"

#: The modules TLS needs: pyOpenSSL and service-identity.
_NEEDED = ("OpenSSL.SSL", "service_identity")


def tls_problem() -> str | None:
    """
    Why TLS cannot work in this Python, or `None` when it can.

    :return: the distribution that is missing or broken, in a few words
        (``"pyOpenSSL is not installed"``), or `None`.
    """
    for module, name in zip(_NEEDED, ("pyOpenSSL", "service-identity"), strict=True):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{name} is not installed"
        except Exception:  # a broken install raises whatever it raises
            return f"{name} is installed but does not import"
    return None


def tls_available() -> bool:
    """
    Whether TLS endpoints (``ssl:``, ``tls:``) can work here.
    """
    return tls_problem() is None


def tls_unavailable_message(what: str) -> str | None:
    """
    The one-line error for ``what`` (the option and its value, as the user
    wrote them) when TLS cannot work here, or `None` when it can.

    :param what: for example ``"--listen 'ssl:50443:...'"``.
    :return: for example ``"--listen 'ssl:50443:...': TLS needs pyOpenSSL
        and service-identity (pyOpenSSL is not installed); install them with:
        pip install 'capserv[tls]'"``.
    """
    problem = tls_problem()
    if problem is None:
        return None
    return f"{what}: TLS needs pyOpenSSL and service-identity ({problem}); install them with: {TLS_INSTALL_HINT}"
