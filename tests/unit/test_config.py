"""
In-memory tests for `capserv.protocols.config`: what `CapservConfig` accepts and
how it names what it refuses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols.config import MIN_UDP_BYTE_BURST, CapservConfig, ConfigError
from capserv.protocols.udp import MAX_REPLY_IPV4, MAX_REPLY_IPV6


class ValidationTests(SynchronousTestCase):
    def assertRefused(self, field: str, value: object, message: str) -> None:
        with self.assertRaises(ConfigError, msg=f"{field}={value!r}") as caught:
            CapservConfig(**{field: value})  # type: ignore[arg-type]
        self.assertEqual((caught.exception.field, str(caught.exception)), (field, f"{field}: {message}"))

    def test_numbers_out_of_range_name_the_field(self) -> None:
        """
        Each number is checked for its kind and its range, and the error names the
        field, what it must be, and the value given.
        """
        self.assertRefused("idle_timeout", -1.0, "must be a number >= 0, not -1.0")
        self.assertRefused("udp_rate", float("nan"), "must be a number >= 0, not nan")
        self.assertRefused("abort_grace", "5", "must be a number >= 0, not '5'")
        self.assertRefused("max_connections", 1.5, "must be a whole number >= 0, not 1.5")
        self.assertRefused("max_connections_per_ip", True, "must be a whole number >= 0, not True")
        self.assertRefused("high_water", 0, "must be a whole number >= 1, not 0")
        self.assertRefused("udp_rate_table_size", 0, "must be a whole number >= 1, not 0")
        self.assertRefused("high_water", 1 << 31, "must be at most 1073741824 (1 GiB), not 2147483648")
        self.assertRefused("shutdown_timeout", 1e12, "must be at most 86400 (a day), not 1000000000000.0")
        self.assertRefused("idle_timeout", float("inf"), "must be at most 2592000 (30 days), not inf")
        self.assertRefused("ipv4_prefix", 33, "must be a prefix length from 1 to 32, not 33")
        self.assertRefused("ipv6_prefix", 0, "must be a prefix length from 1 to 128, not 0")

    def test_zero_turns_limits_off_and_bursts_follow_their_rates(self) -> None:
        """
        Zero is accepted for every limit, timeout and rate; a burst may be 0 only
        while its rate is off.
        """
        CapservConfig(idle_timeout=0, max_connections=0, udp_rate=0, udp_burst=0, udp_byte_rate=0, udp_byte_burst=0)
        self.assertRefused("udp_burst", 0, "must be >= 1 while the UDP rate limit is on, not 0")

    def test_byte_burst_must_hold_the_largest_reply(self) -> None:
        """
        A byte burst smaller than the largest reply capserv sends (65,527 bytes over
        IPv6) is refused while the byte rate is on, so every reply can pass.
        """
        self.assertEqual(MIN_UDP_BYTE_BURST, MAX_REPLY_IPV6)
        with self.assertRaises(ValueError) as caught:
            CapservConfig(udp_byte_burst=MAX_REPLY_IPV4)
        self.assertIn("udp_byte_burst", str(caught.exception))
        CapservConfig(udp_byte_rate=0, udp_byte_burst=0)

    def test_encoding_checked_and_canonical(self) -> None:
        """
        The encoding is kept under its canonical name, and one that cannot carry
        ASCII letters is refused as a ConfigError naming the field.
        """
        self.assertEqual(CapservConfig(encoding="UTF8").encoding, "utf-8")
        with self.assertRaises(ConfigError) as caught:
            CapservConfig(encoding="utf-16")
        self.assertEqual(caught.exception.field, "encoding")
