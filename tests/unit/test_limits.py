"""
In-memory tests for `capserv.protocols.limits`: the connection limits, through the factory.
"""

from __future__ import annotations

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv import UppercaseProtocol
from capserv.protocols.tcp import _Refused

from ..support.tcp_harness import Harness, peer


class LimitTests(SynchronousTestCase):
    def test_max_connections(self) -> None:
        """
        Past --max-connections a new connection is closed at once and counted; the open
        ones are not disturbed, and a slot frees when one closes.
        """
        h = Harness(max_connections=2)
        a, _ = h.connect(port=1)
        b, _ = h.connect(port=2)
        refused = h.factory.buildProtocol(peer(port=3))
        self.assertIsInstance(refused, _Refused)
        tr = StringTransport()
        refused.makeConnection(tr)
        self.assertTrue(tr.disconnecting)
        self.assertEqual(h.factory.stats.connections_refused["max_connections"], 1)
        # The others are not disturbed, and a slot frees when one closes.
        a.dataReceived(b"ok")
        h.lose(b)
        self.assertIsInstance(h.factory.buildProtocol(peer(port=4)), UppercaseProtocol)

    def assertRefused(self, h: Harness, host: str, port: int) -> None:
        proto, tr = h.connect(host, port)
        self.assertTrue(tr.disconnecting, "closed at once")
        self.assertNotIn(proto, h.factory.connections)
        proto.dataReceived(b"ignored")  # type: ignore[union-attr]
        self.assertEqual(tr.value(), b"")
        h.lose(proto)

    def test_max_connections_per_ip(self) -> None:
        """
        Past --max-connections-per-ip a connection from that address is refused and
        counted, while other addresses still connect.
        """
        h = Harness(max_connections_per_ip=2)
        h.connect("192.0.2.1", 1)
        h.connect("192.0.2.1", 2)
        self.assertRefused(h, "192.0.2.1", 3)
        _, other = h.connect("192.0.2.2", 3)
        self.assertFalse(other.disconnecting)
        self.assertEqual(h.factory.stats.connections_refused["max_connections_per_ip"], 1)
        self.assertEqual(h.factory.limits.count("192.0.2.1"), 2)

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        """
        An IPv4-mapped IPv6 peer counts against the plain IPv4 address's per-IP limit.
        """
        h = Harness(max_connections_per_ip=1)
        h.connect("192.0.2.7", 1)
        self.assertRefused(h, "::ffff:192.0.2.7", 2)
        self.assertEqual(h.factory.limits.count("192.0.2.7"), 1)

    def test_per_ip_count_released_on_close(self) -> None:
        """
        Closing a connection releases its per-IP slot (IPv6 here), so the address can
        connect again.
        """
        h = Harness(max_connections_per_ip=1)
        proto, _ = h.connect("2001:db8::1", 1)
        h.lose(proto)
        self.assertEqual(h.factory.limits.count("2001:db8::1"), 0)
        _, tr = h.connect("2001:db8::1", 2)
        self.assertFalse(tr.disconnecting)

    def test_unix_peers_have_no_per_ip_limit(self) -> None:
        """
        UNIX-socket peers have no address and no per-IP limit.
        """
        h = Harness(max_connections_per_ip=1)
        for _ in range(3):
            proto = h.factory.buildProtocol(UNIXAddress(None))
            self.assertIsInstance(proto, UppercaseProtocol)
            proto.makeConnection(StringTransport(peerAddress=UNIXAddress(None)))

    def test_refusals_logged_but_throttled(self) -> None:
        """
        Refusals are logged at most once per 10 seconds, naming the limit, and the next
        line says how many were held back.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness(max_connections=1)
        h.connect()
        for i in range(5):
            h.factory.buildProtocol(peer(port=i))
        refusals = [e for e in events if "Refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["limit"], "max_connections")
        h.clock.advance(11)
        h.factory.buildProtocol(peer(port=9))
        refusals = [e for e in events if "Refused" in e.get("log_format", "")]
        self.assertEqual(refusals[-1]["held"], 4)


class NetworkLimitTests(SynchronousTestCase):
    """The per-IP connection limit counts a source network, not an address."""

    assertRefused = LimitTests.assertRefused

    def test_one_ipv6_64_shares_one_budget(self) -> None:
        """
        Two addresses of one IPv6 /64 share one per-IP budget (one host owns the whole
        /64), while an address of the next /64 has its own.
        """
        h = Harness(max_connections_per_ip=2)
        h.connect("2001:db8:0:1::5", 1)
        h.connect("2001:db8:0:1:ffff::6", 2)
        self.assertRefused(h, "2001:db8:0:1::7", 3)
        _, other = h.connect("2001:db8:0:2::5", 4)
        self.assertFalse(other.disconnecting)
        self.assertEqual(h.factory.limits.count("2001:db8:0:1::99"), 2)
        self.assertEqual(h.factory.limits.count("2001:db8:0:2::5"), 1)

    def test_shorter_ipv6_prefix_merges_more(self) -> None:
        """
        With --ipv6-prefix 48, two /64s of one /48 share a budget; another /48 does not.
        """
        h = Harness(max_connections_per_ip=1, ipv6_prefix=48)
        h.connect("2001:db8:1:1::1", 1)
        self.assertRefused(h, "2001:db8:1:2::1", 2)
        _, other = h.connect("2001:db8:2::1", 3)
        self.assertFalse(other.disconnecting)

    def test_ipv4_prefix_24(self) -> None:
        """
        With --ipv4-prefix 24 two addresses of one /24 share a budget, and an IPv4-mapped
        peer counts in its IPv4 /24; another /24 does not.
        """
        h = Harness(max_connections_per_ip=2, ipv4_prefix=24)
        h.connect("198.51.100.1", 1)
        h.connect("::ffff:198.51.100.200", 2)
        self.assertRefused(h, "198.51.100.7", 3)
        _, other = h.connect("198.51.101.1", 4)
        self.assertFalse(other.disconnecting)
        self.assertEqual(h.factory.limits.count("198.51.100.50"), 2)

    def test_closing_releases_the_networks_slot(self) -> None:
        """
        A connection that closes gives its network's slot back to any address of it,
        which then holds it.
        """
        h = Harness(max_connections_per_ip=1)
        proto, _ = h.connect("2001:db8::1", 1)
        h.lose(proto)
        _, tr = h.connect("2001:db8::2", 2)
        self.assertFalse(tr.disconnecting)
        self.assertRefused(h, "2001:db8::1", 3)

    def test_refusal_names_the_network(self) -> None:
        """
        A per-IP refusal is logged naming the peer, its network with the prefix, how
        many connections that network has and the config field (not a command-line
        flag), and is counted by family.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness(max_connections_per_ip=1)
        h.connect("2001:db8::1", 1)
        self.assertRefused(h, "2001:db8::5", 2)
        (refusal,) = [e for e in events if "Refused" in e.get("log_format", "")]
        self.assertEqual(refusal["peer"], "[2001:db8::5]:2")
        self.assertEqual(refusal["network"], "2001:db8::/64")
        self.assertEqual(refusal["open"], 1)
        self.assertEqual(
            formatEvent(refusal),
            "Refused connection from [2001:db8::5]:2: max_connections_per_ip reached"
            " (2001:db8::/64 has 1 connection open; max_connections_per_ip=1) (0 more refused since the last report)",
        )
        self.assertNotIn("detail", refusal)
        self.assertEqual(h.factory.snapshot()["limited"], {"max_connections_per_ip": {"ipv6": 1}})
