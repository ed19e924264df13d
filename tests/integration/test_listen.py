"""
`capserv.daemon.listen` on real sockets bound on 127.0.0.1: every listener
is bound before any serves, or none is; a port this command asks for twice,
a taken ``ssl:`` port and a port held by closing connections are each named
as what they are.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from capserv.daemon.listen import ListenError, parse_listen
from capserv.tap import makeService

from ..support.daemon_fakes import LOCAL, parse, scratch_file


class BindAllTests(SynchronousTestCase):
    """Every listener is bound before any serves, or none is."""

    def test_one_bad_listener_means_none_listens(self) -> None:
        """A taken port ends the start with one line, and the listener bound
        before it lets its address go."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            taken = holder.getsockname()[1]
            options = parse("--listen", LOCAL, "--listen", f"tcp:{taken}:interface=127.0.0.1")
            reactor = MemoryReactorClock()
            with self.assertRaises(SystemExit) as caught:
                makeService(options, reactor=reactor)
        message = str(caught.exception.code)
        self.assertIn(f"cannot listen on 'tcp:{taken}:interface=127.0.0.1'", message)
        self.assertIn("already in use", message)
        self.assertNotIn("\n", message)
        self.assertFalse(options["settings"].listen[0].bound)
        self.assertEqual(reactor.adoptedPorts, [])

    def test_clash_between_own_listeners_is_named(self) -> None:
        """A port two listeners of this command both ask for is reported as
        that clash (not as another program's), for streams, for datagrams
        on 0.0.0.0 then ::, and for --metrics; nothing stays bound."""
        cases = [
            (lambda port: ["--listen", f"tcp:{port}:interface=127.0.0.1"] * 2, ""),
            (
                lambda port: [
                    "--listen",
                    LOCAL,
                    "--metrics",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--listen",
                    f"tcp:{port}",
                ],
                "",
            ),
            (
                lambda port: ["--listen", f"udp:{port}:interface=0.0.0.0", "--listen", f"udp:{port}:interface=\\:\\:"],
                " (on Linux, :: takes IPv4 too)",
            ),
        ]
        for make_args, hint in cases:
            if socket.has_ipv6 is False and hint:
                continue
            # The port is chosen free, but tests in other processes may take
            # it before the first listener binds it (then that listener's
            # own bind fails, which is not what is tested): choose again.
            for _ in range(5):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("0.0.0.0", 0))
                    free = probe.getsockname()[1]
                options = parse(*make_args(free))
                second = options["settings"].metrics or options["settings"].listen[1]
                first = options["settings"].listen[-1] if options["settings"].metrics else options["settings"].listen[0]
                with self.assertRaises(SystemExit, msg=make_args(free)) as caught:
                    makeService(options, reactor=MemoryReactorClock())
                if "of this same command" not in str(caught.exception.code):
                    alone = parse("--listen", first.description)["settings"].listen[0]
                    try:
                        alone.bind()
                    except Exception:
                        continue  # taken by another process meanwhile
                    alone.close()
                break
            self.assertEqual(
                caught.exception.code,
                f"capserv: cannot listen on '{second.description}': port {free} is already taken by "
                f"--listen '{first.description}' of this same command{hint}; drop one of them",
            )
            self.assertFalse(first.bound)


class TLSBindTests(SynchronousTestCase):
    """An ssl: listener's port is checked when the others are bound."""

    def test_taken_ssl_port_stops_the_start(self) -> None:
        """A taken ssl: port ends makeService with one line, before daemonizing."""
        import trustme

        key = scratch_file(self)
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            options = parse("--listen", LOCAL, "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}")
            with self.assertRaises(SystemExit) as caught:
                makeService(options, reactor=MemoryReactorClock())
        self.assertIn(f"127.0.0.1:{port} is already in use", str(caught.exception.code))
        self.assertFalse(options["settings"].listen[0].bound)

    def test_two_identical_ssl_listeners_name_the_clash(self) -> None:
        """Two ssl: listeners of one port are named as this command's clash at makeService, not Twisted's."""
        import trustme

        key = scratch_file(self)
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(key)
        with socket.socket() as finder:
            finder.bind(("127.0.0.1", 0))
            port = finder.getsockname()[1]
        description = f"ssl:{port}:interface=127.0.0.1:privateKey={key}"
        options = parse("--listen", description, "--listen", description)
        with self.assertRaises(SystemExit) as caught:
            makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            caught.exception.code,
            f"capserv: cannot listen on '{description}': port {port} is already taken by "
            f"--listen '{description}' of this same command; drop one of them",
        )
        # Nothing is left holding the port.
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))


class TimeWaitTests(SynchronousTestCase):
    """A port held only by closing connections is named as such."""

    def test_time_wait_left_by_a_program_without_reuseaddr(self) -> None:
        """After a server without SO_REUSEADDR closes first (as the lesson's
        does), the port cannot be bound for a while: the error says why,
        instead of telling the operator to stop a listener that is not there."""
        server = socket.socket()  # no SO_REUSEADDR, as the lesson's server
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end keeps TIME_WAIT
        client.recv(1)
        client.close()
        server.close()
        listener = parse_listen(f"tcp:{port}:interface=127.0.0.1")
        with self.assertRaises(ListenError) as caught:
            listener.bind()
        self.assertIn("TIME_WAIT", str(caught.exception))

    def test_udp_port_in_use_is_never_blamed_on_tcp_time_wait(self) -> None:
        """TIME_WAIT is a TCP state: a UDP port held by another program is
        "in use", even while a TCP connection on the same port number is
        closing (CI once saw the TIME_WAIT wording for a UDP port)."""
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.recv(1)
        client.close()
        server.close()
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", port))
        listener = parse_listen(f"udp:{port}:interface=127.0.0.1")
        with self.assertRaises(ListenError) as caught:
            listener.bind()
        self.assertIn("in use", str(caught.exception))
        self.assertNotIn("TIME_WAIT", str(caught.exception))
