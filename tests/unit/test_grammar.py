"""
Tests for `capserv.endpoints.grammar` and the parsing half of
`capserv.daemon.listen`: one tokenizer, one shape per kind, and the errors
a person gets for a description that cannot be used.  In memory: nothing
binds.
"""

from __future__ import annotations

import socket
from pathlib import Path

from twisted.internet.endpoints import _parse, serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.listen import (
    DEFAULT_BACKLOG,
    DatagramListener,
    ListenError,
    ProxyListener,
    StreamListener,
    SystemdStreamListener,
    UnixListener,
    parse_listen,
)
from capserv.endpoints import grammar
from capserv.endpoints.grammar import SERVER_KINDS, DescriptionError, form, parse
from capserv.tap import Options

LOCAL = "tcp:0:interface=127.0.0.1"
LOCAL_UDP = "udp:0:interface=127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


def parse_options(*args: str) -> Options:
    """Parse a capserv command line as ``twistd capserv`` would."""
    options = Options()
    options.parseOptions(list(args))
    return options


class ListenParsingTests(SynchronousTestCase):
    """Every --listen is checked when parsed, before anything listens."""

    def test_forms(self) -> None:
        """The accepted forms give the expected typed listeners."""
        tcp = parse_listen("tcp:50007")
        assert isinstance(tcp, StreamListener)
        self.assertEqual((tcp.host, tcp.port, tcp.backlog, tcp.family), ("", 50007, DEFAULT_BACKLOG, socket.AF_INET))
        tcp6 = parse_listen("tcp6:7")
        assert isinstance(tcp6, StreamListener)
        self.assertEqual((tcp6.host, tcp6.family), ("::", socket.AF_INET6))
        self.assertEqual(parse_listen("tcp:1:backlog=7").backlog, 7)  # type: ignore[attr-defined]
        udp = parse_listen("udp:port=7:interface=127.0.0.1")
        assert isinstance(udp, DatagramListener)
        self.assertEqual((udp.host, udp.port, udp.shareable), ("127.0.0.1", 7, True))
        self.assertEqual(parse_listen("udp:9").port, 9)  # type: ignore[attr-defined]
        self.assertEqual(parse_listen("udp:0:interface=\\:\\:1").host, "::1")  # type: ignore[attr-defined]
        unix = parse_listen("unix:/tmp/capserv-test.sock:mode=600")
        assert isinstance(unix, UnixListener)
        self.assertEqual((unix.path, unix.mode), ("/tmp/capserv-test.sock", 0o600))
        proxied = parse_listen("haproxy:tcp:5:interface=127.0.0.1")
        assert isinstance(proxied, ProxyListener)
        self.assertTrue(proxied.shareable)

    def test_errors_say_what_to_write(self) -> None:
        """Each bad description is refused with a line naming it and the fix."""
        for bad, expected in [
            ("tcp:70000", "port must be a number from 0 to 65535"),
            ("tcp:-1", "port must be a number from 0 to 65535"),
            ("udp:99999", "port must be a number from 0 to 65535"),
            ("tcp:notaport", "port must be a number"),
            ("tcp", "no port; write tcp:PORT"),
            ("udp:", "no port; write udp:PORT"),
            ("unix:", "no socket path; write unix:PATH"),
            ("udp:1:2", "too many values"),
            ("tcp6:5000:interface=::1", "escape an IPv6 address's colons: write interface=\\:\\:1"),
            ("udp:5000:interface=", "interface is empty"),
            ("tcp:5000:interface=", "interface is empty"),
            ("ssl:5000", "no privateKey; write ssl:PORT:privateKey=KEY.pem"),
            ("tcp:5000:interface=foo", "interface must be an IP address"),
            ("tcp6:5000:interface=127.0.0.1", "use tcp: for IPv4"),
            ("tcp:5000:backlog=0", "backlog must be a whole number >= 1"),
            ("unix:/nonexistent-folder/c.sock", "folder /nonexistent-folder does not exist"),
            ("unix:/tmp/c.sock:mode=rw", "mode must be octal"),
            ("systemd:domain=INET:index=0", "LISTEN_FDS is not set"),
            ("udp:systemd=0", "LISTEN_FDS is not set"),
            ("haproxy:udp:5", "haproxy: wraps a stream listener"),
            ("bogus:1", "unknown kind 'bogus'"),
            ("ssl:0:privateKey=/nonexistent.pem", "cannot read /nonexistent.pem"),
        ]:
            with self.assertRaises(ListenError, msg=bad) as caught:
                parse_listen(bad)
            message = str(caught.exception)
            self.assertIn(expected, message, bad)
            self.assertIn(repr(bad), message)
            self.assertNotIn("\n", message)

    def test_workers_refuse_unshareable_listeners(self) -> None:
        """--workers takes tcp, tcp6, udp and haproxy:tcp; a UNIX socket is refused by name."""
        with self.assertRaises(usage.UsageError) as caught:
            parse_options("--workers=2", "--listen", "unix:/tmp/capserv-w.sock")
        self.assertIn("unix:/tmp/capserv-w.sock", str(caught.exception))
        parse_options("--workers=2", "--listen", LOCAL, "--listen", LOCAL_UDP, "--listen", "haproxy:tcp:0")


class TokenizerTests(SynchronousTestCase):
    """Descriptions split as Twisted splits them."""

    def test_same_parts_as_twisted(self) -> None:
        """Positional values and key=value pairs come out as Twisted's own parser has them."""
        for description in [
            "tcp:50007:interface=127.0.0.1",
            "tcp6:50007:interface=\\:\\:1",
            "unix:/run/a\\:b.sock:mode=600",
            "ssl:443:privateKey=k=v.pem:certKey=c",
            "tls:host=h:port=1:trustRoots=/a\\:b",
            "x:a\\=b=c",
            "tcp",
        ]:
            args, kwargs = _parse(description)
            tokens = list(grammar._tokens(description))
            self.assertEqual([value for key, value in tokens if key is None], args, description)
            self.assertEqual({key: value for key, value in tokens if key is not None}, kwargs, description)

    def test_dangling_backslash_is_refused(self) -> None:
        """A backslash that ends a description escapes nothing: Twisted refuses
        it, and so does each of capserv's readers, in one line saying what to
        write, instead of dropping it and serving what is left."""
        from capserv.endpoints.native import native_endpoint

        for description in ("tcp:50008\\", "tcp:50008:interface=\\:\\:1\\", "udp:50008\\", "unix:/tmp/a.sock\\"):
            self.assertRaises((RuntimeError, ValueError), serverFromString, MemoryReactor(), description)
            with self.assertRaises(ListenError, msg=description) as caught:
                parse_listen(description)
            self.assertEqual(
                str(caught.exception),
                f"--listen '{description}': a backslash at the end escapes nothing; "
                "remove it, or write \\\\ for a backslash",
            )
        with self.assertRaises(DescriptionError):
            native_endpoint(MemoryReactor(), "tcp:21310\\")
        self.assertEqual(parse_listen("unix:/tmp/a\\\\b").path, "/tmp/a\\b")  # type: ignore[attr-defined]

    def test_host_with_colons_is_an_ipv6_address(self) -> None:
        """A host with a colon must be an IPv6 address (a name has none)."""
        self.assertEqual(grammar.host_name("[fe80::1%lo]"), "fe80::1%lo")
        for bad in (":::1", "1:2", "[::1:]"):
            self.assertRaises(DescriptionError, grammar.host_name, bad)


class ShapeTests(SynchronousTestCase):
    """One declared shape per kind: it parses, validates and documents."""

    def test_one_backlog(self) -> None:
        """The native endpoint, the grammar and the daemon share one default backlog."""
        import capserv.native

        self.assertEqual({DEFAULT_BACKLOG, grammar.DEFAULT_BACKLOG, capserv.native.DEFAULT_BACKLOG}, {1024})

    def test_forms_come_from_the_signatures(self) -> None:
        """A kind's written form is its shape's signature."""
        self.assertEqual(form("tcp"), "tcp:PORT[:interface=ADDRESS][:backlog=N]")
        self.assertEqual(form("unix"), "unix:PATH[:mode=OCTAL][:backlog=N][:lockfile=0|1]")

    def test_every_kind_is_documented(self) -> None:
        """--help and docs/operations.rst name every kind the grammar reads."""
        help_text = Options.opt_listen.__doc__ or ""
        operations = (ROOT / "docs" / "operations.rst").read_text()
        for kind in [*SERVER_KINDS, "haproxy"]:
            self.assertIn(f"{kind}:", help_text, kind)
            self.assertIn(f"``{kind}:", operations, kind)

    def test_kinds_are_lowercase_as_in_twisted(self) -> None:
        """TCP: is refused by the daemon as by Twisted, with the fix (it was accepted by the daemon alone)."""
        with self.assertRaises(ValueError):
            serverFromString(MemoryReactor(), "TCP:0")
        for upper in ("TCP:0", "UDP:9", "Unix:/tmp/x.sock", "HAPROXY:tcp:0"):
            with self.assertRaises(ListenError, msg=upper) as caught:
                parse_listen(upper)
            self.assertIn(f"write {upper.split(':')[0].lower()}:", str(caught.exception))

    def test_no_parameter_accepted_and_ignored(self) -> None:
        """A parameter capserv would not act on is refused (wantPID= was accepted and ignored)."""
        with self.assertRaises(ListenError) as caught:
            parse_listen("unix:/tmp/capserv-test.sock:wantPID=1")
        self.assertIn("unknown parameter 'wantPID'", str(caught.exception))
        self.assertIn("lockfile", str(caught.exception))

    def test_unix_lockfile_is_read(self) -> None:
        """lockfile= is parsed (0 or 1), not dropped."""
        self.assertTrue(parse("unix:/tmp/x.sock").lockfile)
        self.assertFalse(parse("unix:/tmp/x.sock:lockfile=0").lockfile)
        with self.assertRaises(DescriptionError):
            parse("unix:/tmp/x.sock:lockfile=yes")

    def test_positional_values_as_twisted(self) -> None:
        """Values without a name fill the parameters in the signature's order, as in Twisted."""
        self.assertEqual(parse("tcp:5:127.0.0.1:7"), grammar.Inet("tcp", "127.0.0.1", 5, 7))
        self.assertEqual(parse("tcp6:5:7").backlog, 7)

    def test_twisted_served_kinds_get_capserv_backlog(self) -> None:
        """ssl: listens with capserv's backlog unless it says, like tcp: (the docs promise it)."""
        self.assertEqual(grammar.twisted_description("ssl:5:privateKey=k"), "ssl:5:privateKey=k:backlog=1024")
        self.assertEqual(grammar.twisted_description("ssl:5:backlog=3:privateKey=k"), "ssl:5:backlog=3:privateKey=k")
        self.assertEqual(grammar.twisted_description("bogus:1"), "bogus:1")


class SystemdNameTests(SynchronousTestCase):
    """systemd: takes name= as Twisted's does (the daemon refused it)."""

    def passed(self, names: list[str]) -> list[int]:
        """Pretend systemd passed one unbound stream socket per name."""
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in names]
        for made in sockets:
            self.addCleanup(made.close)
        descriptors = [made.fileno() for made in sockets]
        self.patch(grammar, "systemd_descriptors", lambda: descriptors)
        self.patch(grammar, "systemd_names", lambda: names)
        return descriptors

    def test_name(self) -> None:
        self.passed(["metrics", "web"])
        listener = parse_listen("systemd:domain=INET:name=web")
        assert isinstance(listener, SystemdStreamListener)
        self.assertEqual(listener.index, 1)
        self.assertEqual(parse_listen("systemd:INET:0").index, 0)  # type: ignore[attr-defined]

    def test_name_errors(self) -> None:
        self.passed(["web"])
        for bad, expected in [
            ("systemd:domain=INET:name=api", "no socket named 'api' (names: web)"),
            ("systemd:domain=INET:index=0:name=web", "write index=N or name=NAME"),
            ("systemd:domain=INET", "write index=N or name=NAME"),
            ("systemd:domain=inet:index=0", "domain must be INET, INET6 or UNIX"),
        ]:
            with self.assertRaises(ListenError, msg=bad) as caught:
                parse_listen(bad)
            self.assertIn(expected, str(caught.exception), bad)
