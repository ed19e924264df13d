"""
In-memory tests for `capserv.protocols.udp`: a fake datagram transport and a Clock.
"""

from __future__ import annotations

import errno

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from capserv import MAX_DATAGRAM, CapservConfig, UppercaseDatagramProtocol
from capserv.protocols.addresses import SourceNetworks
from capserv.protocols.config import MIN_UDP_BYTE_BURST
from capserv.protocols.udp import MAX_REPLY_IPV4, MAX_REPLY_IPV6, DatagramState

CLIENT = ("192.0.2.1", 40000)


class FakeDatagramTransport:
    """Records what is sent; can be told to fail."""

    maxPacketSize = 8192

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error: Exception | None = None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 50007)


def make(**config: object) -> tuple[UppercaseDatagramProtocol, FakeDatagramTransport, Clock]:
    clock = Clock()
    proto = UppercaseDatagramProtocol(CapservConfig(**config), clock=clock)  # type: ignore[arg-type]
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)  # type: ignore[arg-type]
    return proto, transport, clock


class ReplyTests(SynchronousTestCase):
    def test_one_reply_per_datagram_to_source(self) -> None:
        """
        Each datagram gets one reply with its uppercase text, sent to the datagram's own
        source address, and is counted.
        """
        proto, tr, _ = make()
        proto.datagramReceived("straße".encode(), CLIENT)
        proto.datagramReceived(b"two", ("192.0.2.2", 5000))
        self.assertEqual(tr.written, [(b"STRASSE", CLIENT), (b"TWO", ("192.0.2.2", 5000))])
        self.assertEqual(proto.stats.datagrams_out, 2)

    def test_empty_datagram_gets_empty_reply(self) -> None:
        """
        An empty datagram gets an empty reply.
        """
        proto, tr, _ = make()
        proto.datagramReceived(b"", CLIENT)
        self.assertEqual(tr.written, [(b"", CLIENT)])

    def test_invalid_and_partial_bytes_unchanged(self) -> None:
        """
        Invalid bytes and a partial character at the end of a datagram come back
        unchanged.
        """
        proto, tr, _ = make()
        proto.datagramReceived(b"a\xff\xe2\x82", CLIENT)
        self.assertEqual(tr.written[0][0], b"A\xff\xe2\x82")

    def test_ascii_mode(self) -> None:
        """
        With --ascii, non-ASCII characters in a datagram are left alone.
        """
        proto, tr, _ = make(ascii_only=True)
        proto.datagramReceived("ß é".encode(), CLIENT)
        self.assertEqual(tr.written[0][0], "ß é".encode())

    def test_max_packet_size_raised(self) -> None:
        """
        Starting the protocol raises the port's read size to 65,535 bytes, so datagrams
        are never cut at Twisted's default of 8,192.
        """
        _, tr, _ = make()
        self.assertEqual(tr.maxPacketSize, MAX_DATAGRAM)

    def test_ipv6_source(self) -> None:
        """
        A datagram from an IPv6 source (a four-item address) is answered.
        """
        proto, tr, _ = make()
        proto.datagramReceived(b"v6", ("2001:db8::1", 40000, 0, 0))
        self.assertEqual(tr.written[0][0], b"V6")


class OversizeTests(SynchronousTestCase):
    def test_reply_over_ipv4_limit_dropped(self) -> None:
        """
        A reply that grows past the IPv4 limit (2-byte characters that uppercase to 6
        bytes) is not sent, and the drop is counted as oversize.
        """
        proto, tr, _ = make()
        # 'ΐ' is 2 bytes and uppercases to 6: a 30,000-byte datagram grows
        # to 90,000, over the limit.
        proto.datagramReceived("ΐ".encode() * 15000, CLIENT)
        self.assertEqual(tr.written, [])
        self.assertEqual(proto.stats.drops["oversize"], 1)

    def test_largest_reply_sent(self) -> None:
        """
        A reply of exactly 65,507 bytes, the IPv4 limit, is sent whole.
        """
        proto, tr, _ = make()
        proto.datagramReceived(b"a" * MAX_REPLY_IPV4, CLIENT)
        self.assertEqual(len(tr.written[0][0]), MAX_REPLY_IPV4)

    def test_ipv6_limit(self) -> None:
        """
        A 65,527-byte reply goes to an IPv6 peer, but the same reply to an IPv4-mapped
        peer is over the IPv4 limit and dropped.
        """
        proto, tr, _ = make()
        proto.datagramReceived(b"a" * MAX_REPLY_IPV6, ("2001:db8::1", 4000, 0, 0))
        proto.datagramReceived(b"a" * MAX_REPLY_IPV6, ("::ffff:192.0.2.1", 4000, 0, 0))
        self.assertEqual(len(tr.written), 1)
        self.assertEqual(proto.stats.drops["oversize"], 1)


class LowPortTests(SynchronousTestCase):
    def test_low_source_ports_not_answered(self) -> None:
        """
        Datagrams from source ports below 1024 (where echo and chargen live) are not
        answered and counted as low_port; port 1024 is.
        """
        proto, tr, _ = make()
        for port in (7, 19, 1023):
            proto.datagramReceived(b"loop", ("192.0.2.1", port))
        proto.datagramReceived(b"ok", ("192.0.2.1", 1024))
        self.assertEqual(tr.written, [(b"OK", ("192.0.2.1", 1024))])
        self.assertEqual(proto.stats.drops["low_port"], 3)

    def test_drop_line_names_the_option_and_brackets_ipv6(self) -> None:
        """
        The low_port drop line names the config field udp_allow_low_ports (no
        command-line flag: the library does not know the daemon's), and writes an
        IPv6 peer in brackets as the TCP lines do.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, _tr, _clock = make()
        proto.datagramReceived(b"loop", ("::ffff:10.9.0.1", 999, 0, 0))
        (warning,) = [e for e in events if "Dropped" in e.get("log_format", "")]
        self.assertEqual(
            formatEvent(warning).split(";")[0],
            "Dropped a datagram for [::ffff:10.9.0.1]:999 (low_port, 4 bytes: source port below 1024",
        )
        self.assertIn("udp_allow_low_ports answers it)", formatEvent(warning))
        self.assertNotIn("--", formatEvent(warning))

    def test_option_allows_them(self) -> None:
        """
        --udp-allow-low-ports answers a datagram from port 7.
        """
        proto, tr, _ = make(udp_allow_low_ports=True)
        proto.datagramReceived(b"echo", ("192.0.2.1", 7))
        self.assertEqual(tr.written, [(b"ECHO", ("192.0.2.1", 7))])


class RateLimitTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """
        A source gets its burst at once, then the rest are dropped and counted until the
        rate refills tokens with time.
        """
        proto, tr, clock = make(udp_rate=10, udp_burst=5)
        for _ in range(8):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual(len(tr.written), 5)
        self.assertEqual(proto.stats.drops["rate_limit"], 3)
        clock.advance(0.25)  # 2.5 tokens refilled
        for _ in range(5):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual(len(tr.written), 7)

    def test_sources_independent(self) -> None:
        """
        The rate limit is per source IP: another port of the same IP shares its bucket,
        another IP has its own.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1)
        proto.datagramReceived(b"a", ("192.0.2.1", 2000))
        proto.datagramReceived(b"b", ("192.0.2.1", 2001))  # same IP, other port: same bucket
        proto.datagramReceived(b"c", ("192.0.2.2", 2000))
        self.assertEqual([w[0] for w in tr.written], [b"A", b"C"])

    def test_ipv4_mapped_shares_ipv4_bucket(self) -> None:
        """
        An IPv4 address seen as IPv4-mapped IPv6 shares the bucket of the plain IPv4
        address.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1)
        proto.datagramReceived(b"a", ("192.0.2.9", 2000))
        proto.datagramReceived(b"b", ("::ffff:192.0.2.9", 2000, 0, 0))
        self.assertEqual(len(tr.written), 1)

    def test_loopback_exempt_by_default(self) -> None:
        """
        Loopback sources (127.0.0.1 and ::1) are not rate-limited by default.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1)
        for _ in range(10):
            proto.datagramReceived(b"x", ("127.0.0.1", 2000))
            proto.datagramReceived(b"x", ("::1", 2000, 0, 0))
        self.assertEqual(len(tr.written), 20)

    def test_loopback_limited_when_asked(self) -> None:
        """
        --udp-rate-loopback rate-limits loopback sources too.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1, udp_rate_loopback=True)
        for _ in range(10):
            proto.datagramReceived(b"x", ("127.0.0.1", 2000))
        self.assertEqual(len(tr.written), 1)

    def test_zero_disables(self) -> None:
        """
        --udp-rate 0 turns the datagram budget off: every datagram answered (the byte
        budget still applies; see ByteBudgetTests).
        """
        proto, tr, _ = make(udp_rate=0)
        for _ in range(3000):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual(len(tr.written), 3000)

    def test_table_bounded(self) -> None:
        """
        The rate limiter remembers at most --udp-rate-table-size sources, evicting the
        rest.
        """
        proto, _tr, _ = make(udp_rate=1, udp_burst=1, udp_rate_table_size=100)
        for i in range(1000):
            proto.datagramReceived(b"x", (f"10.0.{i // 256}.{i % 256}", 2000))
        assert proto.buckets is not None
        self.assertEqual(len(proto.buckets), 100)
        self.assertEqual(proto.buckets.evictions, 900)


def answered(transport: FakeDatagramTransport) -> list[str]:
    """The hosts that got replies, in order."""
    return [addr[0] for _, addr in transport.written]


class NetworkTests(SynchronousTestCase):
    """The UDP budgets count a source network, not an address."""

    def test_one_ipv6_64_is_one_source(self) -> None:
        """
        Two addresses of one IPv6 /64 share one bucket (one host owns the whole /64),
        while an address of the next /64 has its own.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=2)
        for host in ("2001:db8:0:1::5", "2001:db8:0:1:ffff::6", "2001:db8:0:1::7", "2001:db8:0:2::5"):
            proto.datagramReceived(b"x", (host, 4000, 0, 0))
        self.assertEqual(answered(tr), ["2001:db8:0:1::5", "2001:db8:0:1:ffff::6", "2001:db8:0:2::5"])
        self.assertEqual(proto.stats.drops["rate_limit"], 1)
        assert proto.buckets is not None
        self.assertEqual(len(proto.buckets), 2)

    def test_shorter_ipv6_prefix_merges_more(self) -> None:
        """
        With --ipv6-prefix 48, addresses of two /64s in one /48 share a bucket; another
        /48 does not.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1, ipv6_prefix=48)
        for host in ("2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:2::1"):
            proto.datagramReceived(b"x", (host, 4000, 0, 0))
        self.assertEqual(answered(tr), ["2001:db8:1:1::1", "2001:db8:2::1"])

    def test_ipv6_prefix_128_counts_each_address(self) -> None:
        """
        With --ipv6-prefix 128 each IPv6 address is a source of its own, as before
        prefixes existed.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1, ipv6_prefix=128)
        for host in ("2001:db8::1", "2001:db8::2"):
            proto.datagramReceived(b"x", (host, 4000, 0, 0))
        self.assertEqual(len(tr.written), 2)

    def test_ipv4_prefix_24(self) -> None:
        """
        IPv4 addresses are counted one by one by default; with --ipv4-prefix 24 two
        addresses of one /24 share a bucket, and another /24 does not.
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1)
        proto.datagramReceived(b"x", ("198.51.100.1", 4000))
        proto.datagramReceived(b"x", ("198.51.100.2", 4000))
        self.assertEqual(len(tr.written), 2)
        proto, tr, _ = make(udp_rate=1, udp_burst=1, ipv4_prefix=24)
        for host in ("198.51.100.1", "198.51.100.254", "198.51.101.1"):
            proto.datagramReceived(b"x", (host, 4000))
        self.assertEqual(answered(tr), ["198.51.100.1", "198.51.101.1"])

    def test_ipv4_mapped_counts_in_its_ipv4_network(self) -> None:
        """
        An IPv4-mapped IPv6 source counts in its IPv4 network (by --ipv4-prefix), not in
        an IPv6 /64 (all of IPv4 is in ::ffff:0:0/96).
        """
        proto, tr, _ = make(udp_rate=1, udp_burst=1, ipv4_prefix=24)
        proto.datagramReceived(b"a", ("192.0.2.9", 2000))
        proto.datagramReceived(b"b", ("::ffff:192.0.2.10", 2000, 0, 0))
        proto.datagramReceived(b"c", ("::ffff:198.51.100.1", 2000, 0, 0))
        self.assertEqual(answered(tr), ["192.0.2.9", "::ffff:198.51.100.1"])

    def test_sources_remembered_boundedly(self) -> None:
        """
        The shared state remembers the network of recent source hosts (loopback ones
        spend no budget), and forgets them all once it holds 4,096, so a flood from
        many sources cannot grow it.
        """
        state = DatagramState(CapservConfig(), clock=Clock())
        networks = SourceNetworks()
        self.assertEqual(state.source("127.0.0.1"), b"")
        self.assertEqual(state.source("::1"), b"")
        self.assertEqual(state.source("::ffff:192.0.2.1"), networks.network("192.0.2.1"))
        self.assertEqual(state.source("2001:db8::5"), networks.network("2001:db8::"))
        for i in range(5000):
            state.source(f"10.0.{i // 256}.{i % 256}")
            self.assertLessEqual(len(state._sources), 4096)
        limited = DatagramState(CapservConfig(udp_rate_loopback=True), clock=Clock())
        self.assertEqual(limited.source("127.0.0.1"), networks.network("127.0.0.1"))

    def test_drop_log_and_counters_name_the_network(self) -> None:
        """
        A datagram dropped by a per-source budget is logged with the network and its
        prefix and the config field it is over, and counted by the network's family.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, _tr, clock = make(udp_rate=1, udp_burst=1)
        proto.datagramReceived(b"x", ("2001:db8::5", 4000, 0, 0))
        proto.datagramReceived(b"x", ("2001:db8::6", 4000, 0, 0))
        clock.advance(0.5)  # half a token: still dropped
        proto.datagramReceived(b"x", ("192.0.2.1", 4000))
        proto.datagramReceived(b"x", ("192.0.2.1", 4000))
        warnings = [e for e in events if "Dropped" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["network"], "2001:db8::/64")
        self.assertIn("bytes: 2001:db8::/64 over udp_rate); ", formatEvent(warnings[0]))
        self.assertNotIn("detail", warnings[0])
        self.assertEqual(proto.snapshot()["limited"], {"rate_limit": {"ipv6": 1, "ipv4": 1}})


class ByteBudgetTests(SynchronousTestCase):
    """The UDP byte budget: reply bytes per second per source network."""

    def test_large_datagrams_dropped_small_ones_pass(self) -> None:
        """
        By default a stream of 60,000-byte datagrams from one source gets its byte burst
        (four of them) and the rest are dropped as byte_rate, though they are well
        within the datagram budget; small datagrams from the same source still pass,
        and the budget refills at --udp-byte-rate.
        """
        proto, tr, clock = make()
        big = b"a" * 60000
        for _ in range(10):
            proto.datagramReceived(big, CLIENT)
        self.assertEqual(len(tr.written), 4)
        self.assertEqual(proto.stats.drops["byte_rate"], 6)
        self.assertEqual(proto.stats.drops["rate_limit"], 0)
        for _ in range(100):
            proto.datagramReceived(b"small line", CLIENT)
        self.assertEqual(len(tr.written), 104)
        clock.advance(1)  # 125,000 bytes refilled: two more
        for _ in range(3):
            proto.datagramReceived(big, CLIENT)
        self.assertEqual(len(tr.written), 106)
        self.assertEqual(proto.stats.drops["byte_rate"], 7)

    def test_reply_charged_its_own_size(self) -> None:
        """
        A reply that uppercasing grows is charged its own size: 'ΐ' is 2 bytes and 6
        uppercased, so a 20,000-byte datagram costs 60,000 byte tokens, and a reply that
        grows past what is left is dropped.
        """
        proto, tr, _ = make(udp_byte_burst=MIN_UDP_BYTE_BURST)
        proto.datagramReceived("ΐ".encode() * 10000, CLIENT)
        self.assertEqual(len(tr.written[0][0]), 60000)
        # 5,527 tokens left, not 45,527.
        proto.datagramReceived(b"a" * 6000, CLIENT)
        self.assertEqual(proto.stats.drops["byte_rate"], 1)
        # 4,000 bytes in pass the first check, but are 12,000 out.
        proto.datagramReceived("ΐ".encode() * 2000, CLIENT)
        self.assertEqual(proto.stats.drops["byte_rate"], 2)
        self.assertEqual(len(tr.written), 1)
        # What the dropped datagram was charged at first stays spent.
        proto.datagramReceived(b"a" * 1500, CLIENT)
        self.assertEqual(len(tr.written), 2)

    def test_zero_turns_it_off(self) -> None:
        """
        --udp-byte-rate 0 turns the byte budget off: only the datagram budget applies;
        with both off there are no buckets.
        """
        proto, tr, _ = make(udp_byte_rate=0)
        for _ in range(20):
            proto.datagramReceived(b"a" * 60000, CLIENT)
        self.assertEqual(len(tr.written), 20)
        proto, tr, _ = make(udp_byte_rate=0, udp_rate=0)
        self.assertIsNone(proto.buckets)

    def test_byte_budget_alone(self) -> None:
        """
        With --udp-rate 0 the byte budget still applies: any number of small datagrams,
        a limited number of large ones.
        """
        proto, tr, _ = make(udp_rate=0)
        for _ in range(3000):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual(len(tr.written), 3000)
        for _ in range(10):
            proto.datagramReceived(b"a" * 60000, ("192.0.2.2", 4000))
        self.assertEqual(len(tr.written), 3004)

    def test_loopback_exempt_by_default(self) -> None:
        """
        Loopback sources are exempt from the byte budget as from the datagram budget,
        unless --udp-rate-loopback is given.
        """
        proto, tr, _ = make()
        for _ in range(10):
            proto.datagramReceived(b"a" * 60000, ("127.0.0.1", 4000))
        self.assertEqual(len(tr.written), 10)
        proto, tr, _ = make(udp_rate_loopback=True)
        for _ in range(10):
            proto.datagramReceived(b"a" * 60000, ("::1", 4000, 0, 0))
        self.assertEqual(len(tr.written), 4)

    def test_drop_logged_with_network_and_option(self) -> None:
        """
        A byte-budget drop is logged naming the network and udp_byte_rate, and counted
        as byte_rate by family.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, _tr, _ = make(udp_byte_burst=MIN_UDP_BYTE_BURST)
        proto.datagramReceived(b"a" * 60000, ("2001:db8:7::1", 4000, 0, 0))
        proto.datagramReceived(b"a" * 60000, ("2001:db8:7::2", 4000, 0, 0))
        (warning,) = [e for e in events if "Dropped" in e.get("log_format", "")]
        self.assertEqual(warning["reason"], "byte_rate")
        self.assertIn("bytes: 2001:db8:7::/64 over udp_byte_rate); ", formatEvent(warning))
        self.assertEqual(proto.snapshot()["limited"], {"byte_rate": {"ipv6": 1}})


class MetricsTests(SynchronousTestCase):
    def test_limited_counted_by_family_and_prefix(self) -> None:
        """
        The metrics count per-source refusals and drops by limit, family and the
        configured prefix length (a bounded set of series, none per network), and
        count byte-budget drops as reason byte_rate.
        """
        from prometheus_client import CollectorRegistry

        from capserv.daemon.workers import process_figures
        from capserv.protocols.tcp import UppercaseFactory
        from capserv.site.metrics import CapservCollector

        clock = Clock()
        config = CapservConfig(max_connections_per_ip=1, ipv4_prefix=24, udp_byte_burst=MIN_UDP_BYTE_BURST)
        factory = UppercaseFactory(config, clock=clock)
        for port in (1, 2):
            address = IPv6Address("TCP", "2001:db8::1", port)
            protocol = factory.buildProtocol(address)
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=address))
        state = DatagramState(config, clock=clock)
        proto = state.protocol()
        proto.makeConnection(FakeDatagramTransport())  # type: ignore[arg-type]
        for source in ("192.0.2.1", "192.0.2.2"):
            proto.datagramReceived(b"a" * 60000, (source, 4000))
        registry = CollectorRegistry()
        registry.register(CapservCollector(lambda: process_figures(factory, state), factory.config))

        def limited(limit: str, family: str, prefix: str) -> float | None:
            labels = {"limit": limit, "family": family, "prefix": prefix}
            return registry.get_sample_value("capserv_network_limited_total", labels)

        self.assertEqual(limited("max_connections_per_ip", "ipv6", "/64"), 1)
        self.assertEqual(limited("max_connections_per_ip", "ipv4", "/24"), 0)
        self.assertEqual(limited("byte_rate", "ipv4", "/24"), 1)
        self.assertEqual(limited("rate_limit", "ipv4", "/24"), 0)
        self.assertEqual(registry.get_sample_value("capserv_datagrams_dropped_total", {"reason": "byte_rate"}), 1)


class SendErrorTests(SynchronousTestCase):
    def test_errors_counted_and_logged_now_and_then(self) -> None:
        """
        Send errors are each counted, logged as one warning (no traceback) per 10
        seconds, and the next warning says how many were held back.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, tr, clock = make()
        tr.error = OSError(errno.ENOBUFS, "No buffer space available")
        for _ in range(100):
            proto.datagramReceived(b"x", CLIENT)
        tr.error = MessageLengthError("message too long")
        proto.datagramReceived(b"x", CLIENT)
        self.assertEqual(proto.stats.drops["send_error"], 101)
        warnings = [e for e in events if "Dropped" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("log_failure", warnings[0])
        clock.advance(11)
        tr.error = OSError(errno.EAGAIN, "try again")
        proto.datagramReceived(b"x", CLIENT)
        warnings = [e for e in events if "Dropped" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[1]["held"], 100)
        self.assertEqual(proto.stats.datagrams_out, 0)
