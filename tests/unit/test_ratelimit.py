"""
In-memory tests for `capserv.protocols.ratelimit`: the token buckets on their own,
time given as numbers.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.ratelimit import TokenBuckets
from capserv.protocols.stats import Reason


class TokenBucketsTests(SynchronousTestCase):
    def test_least_recently_seen_evicted(self) -> None:
        """
        When the table is full, the least recently seen source is forgotten first.
        """
        buckets = TokenBuckets(rate=1, burst=1, max_size=2)
        self.assertIsNone(buckets.spend("a", 0))
        self.assertIsNone(buckets.spend("b", 0))
        self.assertEqual(buckets.spend("a", 0), Reason.RATE_LIMIT)  # a is now the most recent
        self.assertIsNone(buckets.spend("c", 0))  # evicts b
        self.assertEqual(buckets.spend("a", 0), Reason.RATE_LIMIT)  # a was kept, still empty
        self.assertEqual((len(buckets), buckets.evictions), (2, 1))

    def test_clock_going_backwards_refills_nothing(self) -> None:
        """
        A clock that goes backwards refills no tokens, and the bucket refills normally
        once time passes again.
        """
        buckets = TokenBuckets(rate=1, burst=1, max_size=2)
        self.assertIsNone(buckets.spend("a", 100))
        self.assertIsNotNone(buckets.spend("a", 50))
        self.assertIsNotNone(buckets.spend("a", 100.5))
        self.assertIsNone(buckets.spend("a", 101.1))

    def test_spend_both_or_nothing(self) -> None:
        """
        TokenBuckets.spend says which budget ran out and spends nothing then.
        """
        buckets = TokenBuckets(rate=1, burst=2, max_size=10, byte_rate=100, byte_burst=100)
        self.assertIsNone(buckets.spend("n", 0, 80))
        self.assertEqual(buckets.spend("n", 0, 30), Reason.BYTE_RATE)
        self.assertIsNone(buckets.spend("n", 0, 20))  # the refusal spent no datagram token
        self.assertEqual(buckets.spend("n", 0, 0), Reason.RATE_LIMIT)
        self.assertIsNone(buckets.spend("n", 1, 100))  # one second: one datagram, 100 bytes

    def test_rate_zero_turns_a_budget_off(self) -> None:
        """
        A rate of 0 turns its budget off: any number of datagrams, or any number of
        bytes, while the other budget still applies.
        """
        datagrams_only = TokenBuckets(rate=1, burst=1, max_size=10)
        self.assertIsNone(datagrams_only.spend("n", 0, 10**9))
        bytes_only = TokenBuckets(rate=0, burst=0, max_size=10, byte_rate=10, byte_burst=10)
        for _ in range(100):
            self.assertIsNone(bytes_only.spend("n", 0, 0))
        self.assertEqual(bytes_only.spend("n", 0, 11), Reason.BYTE_RATE)

    def test_adjust_charges_the_real_size(self) -> None:
        """
        adjust spends more byte tokens for a reply that grew, refuses (spending
        nothing) past what is left, gives tokens back up to the burst, and lets an
        unknown source through.
        """
        buckets = TokenBuckets(rate=1, burst=10, max_size=10, byte_rate=100, byte_burst=100)
        self.assertIsNone(buckets.spend("n", 0, 50))
        self.assertTrue(buckets.adjust("n", 30))  # 20 left
        self.assertFalse(buckets.adjust("n", 21))
        self.assertIsNone(buckets.spend("n", 0, 20))  # the refusal spent nothing
        self.assertTrue(buckets.adjust("n", -1000))  # given back, capped at the burst
        self.assertEqual(buckets.spend("n", 0, 101), Reason.BYTE_RATE)
        self.assertIsNone(buckets.spend("n", 0, 100))
        self.assertTrue(buckets.adjust("unknown", 10**6))
