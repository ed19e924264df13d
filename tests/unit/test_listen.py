"""
`capserv.daemon.listen` without the network: what an ``ssl:`` listener
names is read and checked when the options are parsed.  (Binding:
``tests/integration/test_listen.py``; the grammar: ``test_grammar.py``.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.listen import ListenError, parse_listen

from ..support.daemon_fakes import scratch_file


class TLSFileTests(SynchronousTestCase):
    """An ssl: listener's files are read when the options are parsed."""

    def test_key_file_that_is_not_pem(self) -> None:
        """A key file that is not PEM is named as such, not in OpenSSL's words."""
        key = scratch_file(self)
        with open(key, "w") as f:
            f.write("not a key\n")
        with self.assertRaises(ListenError) as caught:
            parse_listen(f"ssl:0:privateKey={key}")
        message = str(caught.exception)
        self.assertIn("holds no PEM private key; write privateKey=", message)
        self.assertNotIn("routines", message)

    def test_every_tls_file_is_read_at_parse(self) -> None:
        """
        Each file an ssl: listener names is read when the options are parsed
        (Twisted reads dhParameters, and pairs key and certificate, only at
        the first handshake); each problem is one line naming the parameter.
        """
        import trustme

        key = scratch_file(self)
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        other = key.replace("key.pem", "other.pem")
        trustme.CA().issue_cert("localhost").cert_chain_pems[0].write_to_path(other)
        missing = key.replace("key.pem", "missing.pem")
        cases = {
            f"dhParameters={missing}": "dhParameters: cannot read",
            f"dhParameters={key}": "dhParameters: " + key + " holds no PEM DH parameters; make them with",
            f"extraCertChain={missing}": "extraCertChain: cannot read",
            f"extraCertChain={missing.rsplit('/', 1)[0]}": "extraCertChain: cannot read",
            f"certKey={other}": "is not the key of the certificate in certKey",
            "sslmethod=TLSv1": "sslmethod must be one of SSLv23_METHOD, TLS_METHOD",
            "method=TLSv1": "unknown parameter 'method' (this kind takes port, privateKey, certKey, sslmethod",
        }
        for extra, expected in cases.items():
            with self.assertRaises(ListenError, msg=extra) as caught:
                parse_listen(f"ssl:0:privateKey={key}:{extra}")
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertNotIn("\n", message)
            self.assertNotIn("routines", message)
        parse_listen(f"ssl:0:privateKey={key}:certKey={key}:extraCertChain={key}")
