"""
Whether TLS can work here (capserv's ``tls`` extra) and what to install if not; the TLS files of an
``ssl:`` listener and a ``tls:`` client, read with one-line errors.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from capserv.endpoints.grammar import DescriptionError

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
    """The one-line error for ``what`` (as written: ``"--listen 'ssl:50443'"``) if TLS cannot work here."""
    problem = tls_problem()
    hint = f"TLS needs pyOpenSSL and service-identity ({problem}); install them with: {TLS_INSTALL_HINT}"
    return None if problem is None else f"{what}: {hint}"


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


def check_server_files(key: str, cert: str | None, method: str | None, chain: str | None, dh: str | None) -> None:
    """
    Read every file an ``ssl:`` listener names, so a bad one stops the start, not each handshake
    (Twisted reads some only then).  Does nothing without TLS (`tls_unavailable_message` says so).
    """
    if tls_problem() is not None:
        return
    from OpenSSL import SSL

    methods = sorted(n for n in dir(SSL) if n.endswith("_METHOD") and "DTLS" not in n and "CLIENT" not in n)
    if method is not None and method not in methods:
        raise DescriptionError(f"sslmethod must be one of {', '.join(methods)}, not {method!r}; or leave it out")
    certificate = cert or key
    files = {"privateKey": key, "certKey": certificate, "extraCertChain": chain, "dhParameters": dh}
    texts = {name: _read(name, path) for name, path in files.items() if path is not None}
    if "extraCertChain" in texts and b"-----BEGIN CERTIFICATE-----" not in texts["extraCertChain"]:
        raise DescriptionError(f"extraCertChain: {chain} holds no PEM certificate; {_HINTS['extraCertChain']}")
    context = SSL.Context(SSL.TLS_METHOD)
    steps = [
        ("privateKey", "holds no PEM private key", lambda: context.use_privatekey_file(key)),
        ("certKey", "holds no PEM certificate", lambda: context.use_certificate_file(certificate)),
        ("privateKey", "is not the key of the certificate in certKey", context.check_privatekey),
    ]
    if dh is not None:
        steps.append(("dhParameters", "holds no PEM DH parameters", lambda: context.load_tmp_dh(dh)))
    for name, problem, step in steps:
        try:
            step()
        except SSL.Error as e:
            if "too small" in str(e):  # OpenSSL's security level refuses short DH parameters
                problem = "holds DH parameters too short for OpenSSL here"
            raise DescriptionError(f"{name}: {files[name]} {problem}; {_HINTS[name]}") from None


def _read(name: str, path: str) -> bytes:
    """The bytes of the file the parameter ``name`` names, or one line saying it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        why = f"{name}: cannot read {path}: {e.strerror or e}"
        raise DescriptionError(f"{why}; write the path of a file this user can read") from None


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def trust_roots(path: str | None) -> Any:
    """The certificate authorities in a PEM file, or in the files of a folder, as a trust root; `None`: the system's."""
    if path is None:
        return None
    from twisted.internet import ssl

    if not os.path.exists(path):
        raise DescriptionError(f"trustRoots={path}: no such file or folder")
    files = sorted(os.path.join(path, name) for name in os.listdir(path)) if os.path.isdir(path) else [path]
    certificates = []
    for name in filter(os.path.isfile, files):
        for block in _PEM_CERTIFICATE.findall(_read("trustRoots", name)):
            try:
                certificates.append(ssl.Certificate.loadPEM(block))
            except Exception:
                raise DescriptionError(f"trustRoots={path}: {name} holds a certificate that cannot be read") from None
    if not certificates:
        raise DescriptionError(f"trustRoots={path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    return ssl.trustRootFromCertificates(certificates)


def client_certificate(certificate: str | None, private_key: str | None) -> Any:
    """A ``tls:`` client's own certificate and key (``privateKey=`` may be left out if the file has both), or `None`."""
    if certificate is None:
        if private_key is not None:
            raise DescriptionError("privateKey= goes with certificate=CERT.pem; write both, or neither")
        return None
    from twisted.internet import ssl

    pem = _read("certificate", certificate)
    if private_key is not None:
        pem += b"\n" + _read("privateKey", private_key)
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception:
        raise DescriptionError("certificate/privateKey: not a PEM certificate and private key") from None
