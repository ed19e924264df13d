"""
Whether TLS can work here (pyOpenSSL and service-identity, capserv's ``tls``
extra), the one line that says what to install when it cannot, and the
check of an ``ssl:`` listener's files before serving.
"""

from __future__ import annotations

import importlib

from capserv.endpoints.grammar import DescriptionError

__all__ = ["TLS_INSTALL_HINT", "check_server_files", "tls_problem", "tls_unavailable_message"]

TLS_INSTALL_HINT = "pip install 'capserv[tls]'"


def tls_problem() -> str | None:
    """Why TLS cannot work in this Python (``"pyOpenSSL is not installed"``), or `None`."""
    for module, name in (("OpenSSL.SSL", "pyOpenSSL"), ("service_identity", "service-identity")):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{name} is not installed"
        except Exception:  # a broken install raises whatever it raises
            return f"{name} is installed but does not import"
    return None


def tls_unavailable_message(what: str) -> str | None:
    """
    The one-line error for ``what`` (the option and value as written, e.g.
    ``"--listen 'ssl:50443'"``) when TLS cannot work here, or `None`.
    """
    problem = tls_problem()
    if problem is None:
        return None
    return f"{what}: TLS needs pyOpenSSL and service-identity ({problem}); install them with: {TLS_INSTALL_HINT}"


#: What to write instead, for each file of an ``ssl:`` listener.
_HINTS = {
    "privateKey": "write privateKey=KEY.pem, the PEM key of the certificate (the two may share one file)",
    "certKey": "write certKey=CERT.pem, the PEM certificate of privateKey (or leave it out if privateKey holds both)",
    "extraCertChain": "write the PEM certificates between yours and the root there, or leave it out",
    "dhParameters": (
        "make them with 'openssl genpkey -genparam -algorithm DH -pkeyopt dh_param:ffdhe2048 -out dh.pem', "
        "or leave dhParameters out"
    ),
}


def check_server_files(
    private_key: str,
    cert_key: str | None = None,
    sslmethod: str | None = None,
    extra_cert_chain: str | None = None,
    dh_parameters: str | None = None,
) -> None:
    """
    Read every file an ``ssl:`` listener names, as serving will, so that a bad
    one stops the start instead of every handshake (Twisted reads some only
    then).  Does nothing without TLS (`tls_unavailable_message` says so first).

    :raises DescriptionError: one line, naming the parameter and what to write.
    """
    if tls_problem() is not None:
        return
    from OpenSSL import SSL

    methods = sorted(n for n in dir(SSL) if n.endswith("_METHOD") and "DTLS" not in n and "CLIENT" not in n)
    if sslmethod is not None and sslmethod not in methods:
        raise DescriptionError(f"sslmethod must be one of {', '.join(methods)}, not {sslmethod!r}; or leave it out")
    certificate = cert_key or private_key
    files = dict(
        privateKey=private_key, certKey=certificate, extraCertChain=extra_cert_chain, dhParameters=dh_parameters
    )
    texts = {}
    for name, path in files.items():
        try:
            if path is not None:
                with open(path, "rb") as f:
                    texts[name] = f.read()
        except OSError as e:
            why = f"{name}: cannot read {path}: {e.strerror or e}"
            raise DescriptionError(f"{why}; write the path of a file this user can read") from None
    if "extraCertChain" in texts and b"-----BEGIN CERTIFICATE-----" not in texts["extraCertChain"]:
        raise DescriptionError(
            f"extraCertChain: {extra_cert_chain} holds no PEM certificate; {_HINTS['extraCertChain']}"
        )
    context = SSL.Context(SSL.TLS_METHOD)
    steps = [
        ("privateKey", "holds no PEM private key", lambda: context.use_privatekey_file(private_key)),
        ("certKey", "holds no PEM certificate", lambda: context.use_certificate_file(certificate)),
        ("privateKey", "is not the key of the certificate in certKey", context.check_privatekey),
    ]
    if dh_parameters is not None:
        steps.append(("dhParameters", "holds no PEM DH parameters", lambda: context.load_tmp_dh(dh_parameters)))
    for name, problem, step in steps:
        try:
            step()
        except SSL.Error as e:
            if "too small" in str(e):  # OpenSSL's security level refuses short DH parameters
                problem = "holds DH parameters too short for OpenSSL here"
            raise DescriptionError(f"{name}: {files[name]} {problem}; {_HINTS[name]}") from None
