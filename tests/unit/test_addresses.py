"""
In-memory tests for `capserv.protocols.addresses`: the keys limits count by.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.addresses import HOSTS_REMEMBERED, SourceNetworks, describe, family, host_key, is_loopback


class HostKeyTests(SynchronousTestCase):
    def test_ip_addresses_as_limits_count_them(self) -> None:
        """
        An IPv4-mapped peer counts as its IPv4 address and a scope id is dropped,
        from an IAddress or a UDP tuple; an address without a host has no key.
        """
        self.assertEqual(host_key(IPv4Address("TCP", "192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(host_key(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(host_key(("::ffff:192.0.2.1", 1, 0, 0)), "192.0.2.1")
        self.assertEqual(host_key(("fe80::1%eth0", 1, 0, 2)), "fe80::1")
        self.assertEqual(host_key(("2001:db8::1", 1)), "2001:db8::1")
        self.assertIsNone(host_key(UNIXAddress(b"/run/capserv.sock")))
        self.assertIsNone(host_key(None))

    def test_loopback(self) -> None:
        """
        All of 127/8 and ::1 are loopback; other addresses, and text that is no
        address, are not.
        """
        for host in ("127.0.0.1", "127.255.0.9", "::1", "0:0:0:0:0:0:0:1"):
            self.assertTrue(is_loopback(host), host)
        for host in ("128.0.0.1", "10.0.0.1", "::2", "::", "127.1", "127.0.0.1.evil", "localhost", ""):
            self.assertFalse(is_loopback(host), host)


class SourceNetworksTests(SynchronousTestCase):
    def test_networks_written_as_cidr(self) -> None:
        """
        SourceNetworks zeroes the host bits at any prefix length, whole bytes or not,
        and writes the network as CIDR text; mapped IPv4 and scope ids are undone.
        """
        cases = [
            (32, 64, "192.0.2.77", "192.0.2.77/32"),
            (24, 64, "192.0.2.77", "192.0.2.0/24"),
            (1, 64, "192.0.2.77", "128.0.0.0/1"),
            (32, 64, "2001:db8:aa:bb:cc::1", "2001:db8:aa:bb::/64"),
            (32, 48, "2001:db8:aa:bb:cc::1", "2001:db8:aa::/48"),
            (32, 61, "2001:db8:aa:bf:cc::1", "2001:db8:aa:b8::/61"),
            (32, 128, "2001:db8::1", "2001:db8::1/128"),
            (24, 64, "::ffff:198.51.100.9", "198.51.100.0/24"),
            (32, 64, "fe80::1%eth0", "fe80::/64"),
        ]
        for v4, v6, host, expected in cases:
            networks = SourceNetworks(v4, v6)
            key = networks.key((host, 4000))
            assert key is not None
            self.assertEqual(networks.text(key), expected, (v4, v6, host))

    def test_keys_and_families(self) -> None:
        """
        A network's key is its packed address (4 or 16 bytes) and names its family;
        a host that is no IP address counts on its own; UNIX peers have no key.
        """
        networks = SourceNetworks(24, 64)
        self.assertEqual(networks.network("192.0.2.77"), bytes([192, 0, 2, 0]))
        self.assertEqual(family(networks.network("192.0.2.77")), "ipv4")
        self.assertEqual(len(networks.network("2001:db8::1")), 16)
        self.assertEqual(family(networks.network("2001:db8::1")), "ipv6")
        self.assertEqual(networks.network("not-an-address"), b"not-an-address")
        self.assertEqual(networks.text(b"not-an-address"), "not-an-address")
        self.assertIsNone(networks.key(UNIXAddress(b"/run/capserv.sock")))

    def test_key_remembers_hosts_within_bounds(self) -> None:
        """
        key gives the same network for a host seen before, also after more
        hosts than it remembers came (the table is emptied, not grown).
        """
        networks = SourceNetworks(24, 64)
        first = networks.key(("192.0.2.77", 1))
        for n in range(HOSTS_REMEMBERED + 10):
            key = networks.key((f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 2))
            assert key is not None and key[3] == 0
        assert len(networks._hosts) <= HOSTS_REMEMBERED
        self.assertEqual(networks.key(IPv4Address("TCP", "192.0.2.77", 3)), first)
        self.assertEqual(networks.key(("::ffff:192.0.2.9", 4)), first)
        self.assertEqual(networks.key(("fe80::1%eth0", 5)), networks.key(("fe80::2", 6)))


class DescribeTests(SynchronousTestCase):
    def test_addresses_for_log_lines(self) -> None:
        """
        IP peers are host:port with IPv6 in brackets, from an IAddress or a UDP tuple;
        a UNIX peer is its path, or "unix client" for a socket without one.
        """
        self.assertEqual(describe(IPv4Address("TCP", "192.0.2.1", 5678)), "192.0.2.1:5678")
        self.assertEqual(describe(IPv6Address("TCP", "::1", 5678)), "[::1]:5678")
        self.assertEqual(describe(("192.0.2.1", 5678)), "192.0.2.1:5678")
        self.assertEqual(describe(("::ffff:10.9.0.1", 999, 0, 0)), "[::ffff:10.9.0.1]:999")
        self.assertEqual(describe(UNIXAddress(b"/run/capserv.sock")), "/run/capserv.sock")
        self.assertEqual(describe(UNIXAddress(b"")), "unix client")
        self.assertEqual(describe(UNIXAddress(None)), "unix client")
