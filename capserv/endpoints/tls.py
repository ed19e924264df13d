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

__all__ = ["TLS_INSTALL_HINT", "check_server_files", "tls_available", "tls_problem", "tls_unavailable_message"]

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


def check_server_files(
    private_key: str,
    cert_key: str | None = None,
    sslmethod: str | None = None,
    extra_cert_chain: str | None = None,
    dh_parameters: str | None = None,
) -> None:
    """
    Read every file an ``ssl:`` listener names, as serving it will, so that a
    missing or unusable one stops the start instead of every connection
    (Twisted reads ``dhParameters`` and pairs the key with its certificate
    only at the first handshake).  Does nothing when TLS is unavailable
    (`tls_unavailable_message` says so first).

    :raises ValueError: one line, naming the parameter and what to write.
    """
    if tls_problem() is not None:
        return
    from OpenSSL import SSL

    methods = sorted(
        name for name in dir(SSL) if name.endswith("_METHOD") and "DTLS" not in name and "CLIENT" not in name
    )
    if sslmethod is not None and sslmethod not in methods:
        raise ValueError(f"sslmethod must be one of {', '.join(methods)}, not {sslmethod!r}; or leave it out")
    certificate = cert_key or private_key
    files: dict[str, str | None] = {"privateKey": private_key, "certKey": certificate}
    files |= {"extraCertChain": extra_cert_chain, "dhParameters": dh_parameters}
    texts = {}
    for name, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                texts[name] = f.read()
        except OSError as e:
            raise ValueError(
                f"{name}: cannot read {path}: {e.strerror or e}; write the path of a file this user can read"
            ) from None
    context = SSL.Context(SSL.TLS_METHOD)
    steps = [
        ("privateKey", "holds no PEM private key", lambda: context.use_privatekey_file(private_key)),
        ("certKey", "holds no PEM certificate", lambda: context.use_certificate_file(certificate)),
        ("privateKey", "is not the key of the certificate in certKey", context.check_privatekey),
    ]
    if dh_parameters is not None:
        steps.append(("dhParameters", "holds no PEM DH parameters", lambda: context.load_tmp_dh(dh_parameters)))
    if extra_cert_chain is not None and b"-----BEGIN CERTIFICATE-----" not in texts["extraCertChain"]:
        raise ValueError(f"extraCertChain: {extra_cert_chain} holds no PEM certificate; {_HINTS['extraCertChain']}")
    for name, problem, step in steps:
        try:
            step()
        except SSL.Error as e:
            if "too small" in str(e):  # OpenSSL's security level refuses short DH parameters
                problem = "holds DH parameters too short for OpenSSL here"
            raise ValueError(f"{name}: {files[name]} {problem}; {_HINTS[name]}") from None


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
