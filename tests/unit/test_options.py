"""
`capserv.daemon.options`: the command line becomes one frozen `Settings`
(a config and typed listeners), and a bad value is one line in capserv's
words.  Parsing only: nothing is bound.
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.daemon.listen import DEFAULT_LISTEN, DatagramListener, ProxyListener, StreamListener
from capserv.tap import Options

from ..support.daemon import run_with_bad_stdout
from ..support.daemon_fakes import LOCAL, parse


class OptionsTests(SynchronousTestCase):
    """The command line becomes one config and a list of listener objects."""

    def test_no_uvloop_flag(self) -> None:
        """--no-uvloop is a flag, off by default."""
        self.assertTrue(parse("--no-uvloop")["no-uvloop"])
        self.assertFalse(parse()["no-uvloop"])

    def test_defaults(self) -> None:
        """With no --listen, TCP and UDP on 127.0.0.1:50007, and the default config."""
        options = parse()
        self.assertEqual([listener.description for listener in options["settings"].listen], list(DEFAULT_LISTEN))
        self.assertIsInstance(options["settings"].listen[0], StreamListener)
        self.assertIsInstance(options["settings"].listen[1], DatagramListener)
        self.assertEqual(options["settings"].config, CapservConfig())

    def test_every_knob_reaches_the_config(self) -> None:
        """Each limit option lands in its CapservConfig field."""
        options = parse(
            "--encoding=latin1",
            "--ascii",
            "--idle-timeout=7.5",
            "--abort-grace=2",
            "--max-connections=10",
            "--max-connections-per-ip=3",
            "--ipv4-prefix=24",
            "--ipv6-prefix=48",
            "--high-water=1024",
            "--udp-rate=5",
            "--udp-burst=9",
            "--udp-byte-rate=1000",
            "--udp-byte-burst=70000",
            "--udp-rate-loopback",
            "--udp-rate-table-size=50",
            "--udp-allow-low-ports",
            "--shutdown-timeout=4",
            "--no-access-log",
        )
        self.assertEqual(
            options["settings"].config,
            CapservConfig(
                encoding="iso8859-1",
                ascii_only=True,
                idle_timeout=7.5,
                abort_grace=2,
                max_connections=10,
                max_connections_per_ip=3,
                ipv4_prefix=24,
                ipv6_prefix=48,
                high_water=1024,
                udp_rate=5,
                udp_burst=9,
                udp_byte_rate=1000,
                udp_byte_burst=70000,
                udp_rate_loopback=True,
                udp_rate_table_size=50,
                udp_allow_low_ports=True,
                shutdown_timeout=4,
                access_log=False,
            ),
        )

    def test_listen_repeatable_and_replaces_default(self) -> None:
        """Each --listen becomes one typed listener, in order, parsed once."""
        options = parse("--listen", "tcp:1234", "--listen", "udp:1234:interface=\\:\\:1", "--listen", "haproxy:tcp:9")
        kinds = [type(listener) for listener in options["settings"].listen]
        self.assertEqual(kinds, [StreamListener, DatagramListener, ProxyListener])
        self.assertEqual(options["settings"].listen[1].host, "::1")

    def test_bad_values_name_the_option_in_capservs_words(self) -> None:
        """A bad value's error names the option and carries no Twisted wording."""
        for args, culprit in [
            (["--idle-timeout=-1"], "--idle-timeout"),
            (["--max-connections=1.5"], "--max-connections"),
            (["--max-connections=many"], "--max-connections"),
            (["--high-water=0"], "--high-water"),
            # Values a C int or a stop cannot live with: a typing slip.
            (["--high-water=2147483648"], "--high-water: must be at most 1073741824 (1 GiB)"),
            (["--shutdown-timeout=1e12"], "--shutdown-timeout: must be at most 86400 (a day)"),
            (["--abort-grace=1e6"], "--abort-grace: must be at most 86400 (a day)"),
            (["--idle-timeout=1e12"], "--idle-timeout: must be at most 2592000 (30 days)"),
            (["--drain-delay=1e12"], "--drain-delay: '1e12' must be from 0 to 86400"),
            (["--udp-rate=nan"], "--udp-rate"),
            (["--encoding=rot13"], "--encoding"),
            (["--udp-rate=5", "--udp-burst=0"], "--udp-burst"),
            (["--ipv6-prefix=129"], "--ipv6-prefix: '129' must be from 1 to 128"),
            (["--ipv6-prefix=0"], "--ipv6-prefix: '0' must be from 1 to 128"),
            (["--ipv4-prefix=33"], "--ipv4-prefix: '33' must be from 1 to 32"),
            (["--ipv4-prefix=/24"], "--ipv4-prefix: '/24' is not a whole number"),
            (["--udp-byte-rate=fast"], "--udp-byte-rate: 'fast' is not a number"),
            (["--udp-byte-burst=65506"], "--udp-byte-burst: must be at least 65527 (one largest reply)"),
            (["--listen", "nope:1"], "nope:1"),
            (["--listen", "udp:1:color=red"], "color"),
            (["--metrics", "udp:9150"], "--metrics"),
            (["--shutdown-timeout=inf"], "--shutdown-timeout"),
            (["--drain-delay=nan"], "--drain-delay: 'nan' is not a number"),
            (["--idle-timeout=nan"], "--idle-timeout: 'nan' is not a number"),
            (["--encoding=rot13"], "'rot13' is a Python codec but not a text encoding"),
            (["--encoding=utf-16"], "'utf-16' does not write ASCII letters as themselves"),
            (["--encoding=undefined"], "write an ASCII-compatible text encoding such as utf-8"),
            (["--encoding=punycode"], "--encoding: 'punycode' does not write ASCII letters"),
            (["--encoding=idna"], "--encoding: 'idna' cannot write capitals"),
            (["--encoding=no-such"], "--encoding: unknown text encoding 'no-such'; write"),
            (["extra-arg"], "capserv takes no arguments, only options, and 'extra-arg' is not an option"),
            (["--listen", "udp:50007:interface=[::1]"], "without brackets, its colons escaped: interface=\\:\\:1"),
            (["--workers=100000", "--listen", LOCAL], "--workers"),
        ]:
            with self.assertRaises(usage.UsageError, msg=args) as caught:
                parse(*args)
            message = str(caught.exception)
            self.assertIn(culprit, message)
            self.assertNotIn("Parameter type enforcement", message)
            self.assertNotIn("invalid literal", message)
            self.assertNotIn("\n", message)

    def test_metrics_errors_list_only_stream_kinds(self) -> None:
        """--metrics serves HTTP: a bad one lists the stream kinds, not udp:."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--metrics", "abc")
        message = str(caught.exception)
        self.assertIn("--metrics 'abc': unknown kind 'abc'; write tcp:PORT", message)
        self.assertNotIn("udp:", message)

    def test_descriptions_quoted_as_typed(self) -> None:
        """An escaped IPv6 address is shown as typed, not with doubled backslashes."""
        typed = "udp:50007:interface=\\:\\:1:color=red"
        with self.assertRaises(usage.UsageError) as caught:
            parse("--listen", typed)
        self.assertIn(f"--listen '{typed}':", str(caught.exception))
        self.assertNotIn("\\\\", str(caught.exception))

    def test_usage_error_under_twistd_is_one_line_and_a_pointer(self) -> None:
        """As twistd's subcommand, a bad option exits non-zero with one line
        naming it and one pointing at --help; no help text on stdout."""
        options = Options()
        options.parent = usage.Options()  # type: ignore[attr-defined]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--udp-burst=lots"])
        message = str(caught.exception.code)
        lines = message.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("--udp-burst", lines[0])
        self.assertIn("'lots' is not a whole number", lines[0])
        self.assertIn("--help", lines[1])
        self.assertEqual(out.getvalue(), "")

    def test_help_into_a_closed_pipe_or_a_full_disk(self) -> None:
        """``twistd capserv --help`` whose stdout fails: no traceback, exit 1; quiet
        for a pipe whose reader left (``| head -5``), one line for /dev/full."""
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "capserv"]
        for stdout, says in [
            ("pipe", b""),
            ("/dev/full", b"capserv: cannot write to stdout: No space left on device\n"),
        ]:
            result = run_with_bad_stdout([*twistd, "--help"], stdout)
            self.assertEqual((result.returncode, result.stderr), (1, says), stdout)
