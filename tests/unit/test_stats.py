"""In-memory tests for `capserv.protocols.stats`: the reasons and the counters the factories keep."""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.stats import DROPS, PER_SOURCE, REFUSALS, Reason, TCPStats, UDPStats, counts

from ..support.tcp_harness import Harness


class ReasonTests(SynchronousTestCase):
    def test_a_member_is_its_value(self) -> None:
        """A reason equals, hashes, prints and formats as its text (labels of counters, log lines, metrics)."""
        reason = Reason.MAX_CONNECTIONS_PER_IP
        self.assertEqual(reason, "max_connections_per_ip")
        self.assertEqual({reason: 1}["max_connections_per_ip"], 1)
        self.assertEqual(
            (str(reason), f"{reason}", f"{reason:>24}"), (reason.value, reason.value, f"{reason.value:>24}")
        )

    def test_field_names_the_setting(self) -> None:
        """A reason names the configuration field that sets its limit."""
        self.assertEqual(Reason.RATE_LIMIT.field, "udp_rate")
        self.assertEqual(Reason.MAX_CONNECTIONS.field, "max_connections")

    def test_every_reason_is_a_refusal_or_a_drop(self) -> None:
        self.assertEqual(set(REFUSALS) | set(DROPS), set(Reason))
        self.assertFalse(set(REFUSALS) & set(DROPS))
        self.assertLessEqual(set(PER_SOURCE), set(Reason))


class CounterTests(SynchronousTestCase):
    def test_counts_has_plain_text_keys(self) -> None:
        (key,) = counts(Counter({Reason.SHUTDOWN: 2}))
        self.assertIs(type(key), str)
        self.assertEqual(counts(Counter({Reason.SHUTDOWN: 2})), {"shutdown": 2})

    def test_fresh_counters_are_zero(self) -> None:
        tcp, udp = TCPStats(), UDPStats()
        self.assertEqual((tcp.connections_total, tcp.bytes_in, tcp.aborts, tcp.pauses), (0, 0, 0, 0))
        self.assertEqual((udp.datagrams_in, udp.bytes_out), (0, 0))
        tcp.limited[Reason.MAX_CONNECTIONS_PER_IP]["ipv4"] += 1
        self.assertIsNot(TCPStats().limited, tcp.limited)

    def test_totals_include_open_connections(self) -> None:
        """
        The factory's snapshot counts active and total connections and bytes in and out.
        """
        h = Harness()
        a, _ = h.connect(port=1)
        b, _ = h.connect(port=2)
        a.dataReceived(b"abcd")
        h.lose(a)
        b.dataReceived(b"xy")
        snap = h.factory.snapshot()
        self.assertEqual(snap["connections_active"], 1)
        self.assertEqual(snap["connections_total"], 2)
        self.assertEqual(snap["bytes_in"], 6)
        self.assertEqual(snap["bytes_out"], 6)
