"""
Per-source token buckets with a bounded table, for the UDP reflection guard.

A UDP server answers whatever address a datagram claims to come from, so a
spoofed flood turns it into a reflector aimed at a victim.  Each source
(a network: `capserv.protocols.addresses.SourceNetworks`) gets two buckets in one
table entry: ``burst`` datagram tokens refilled at ``rate`` per second, and
``byte_burst`` byte tokens refilled at ``byte_rate`` per second.  A reply
spends one datagram token and its size in byte tokens, or is dropped.  The
table forgets the source seen least recently once it holds ``max_size``
sources, so a flood from many (spoofed) sources cannot grow memory without
bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from capserv.protocols.stats import Reason

__all__ = ["TokenBuckets"]

_INF = float("inf")


class TokenBuckets:
    """
    A bounded, least-recently-seen table of token buckets keyed by source:
    a datagram budget and a byte budget per entry.

    A budget whose rate is 0 is off: its bucket holds infinitely many
    tokens, so the per-datagram code has no branch for it.
    """

    __slots__ = ("_table", "burst", "byte_burst", "byte_rate", "evictions", "max_size", "rate")

    def __init__(self, rate: float, burst: int, max_size: int, byte_rate: float = 0, byte_burst: int = 0) -> None:
        """
        :param rate: datagram tokens added per second to each source's
            bucket; 0 turns the datagram budget off.
        :param burst: the most datagram tokens a bucket holds (and a new one
            starts with).
        :param max_size: the most sources remembered at once.
        :param byte_rate: byte tokens added per second; 0 (the default)
            turns the byte budget off.
        :param byte_burst: the most byte tokens a bucket holds (and a new
            one starts with).
        """
        self.rate = float(rate)
        self.burst = float(burst) if rate > 0 else _INF
        self.byte_rate = float(byte_rate)
        self.byte_burst = float(byte_burst) if byte_rate > 0 else _INF
        self.max_size = max_size
        #: How many sources were forgotten to keep the table bounded.
        self.evictions = 0
        # Moving a key to the end on every hit makes the first key the least
        # recently seen.  An OrderedDict, not a dict: a dict's first key is
        # found by scanning past the slots of keys deleted before it, which
        # made each eviction from a full 65,536-entry table cost 34 µs (a
        # flood from many spoofed sources paid that per datagram); the
        # OrderedDict evicts in constant time, for 35 ns more per hit.  An
        # entry is (datagram tokens, byte tokens, time of the last refill).
        self._table: OrderedDict[Hashable, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def spend(self, key: Hashable, now: float, size: int = 0) -> Reason | None:
        """
        Spend one datagram token and ``size`` byte tokens of ``key``'s
        buckets if they hold that many; spend nothing otherwise.

        :param key: the source.
        :param now: the current time in seconds (from the injected clock).
        :param size: the reply's size in bytes.
        :return: `None` if the reply may be sent, else why not:
            `Reason.RATE_LIMIT` (no datagram token) or `Reason.BYTE_RATE`
            (too few byte tokens).
        """
        table = self._table
        entry = table.get(key)
        if entry is None:
            tokens = self.burst
            byte_tokens = self.byte_burst
            if len(table) >= self.max_size:
                table.popitem(last=False)
                self.evictions += 1
        else:
            table.move_to_end(key)
            tokens, byte_tokens, last = entry
            if now > last:
                # Comparisons rather than min(): this runs for every datagram.
                elapsed = now - last
                tokens += elapsed * self.rate
                if tokens > self.burst:
                    tokens = self.burst
                byte_tokens += elapsed * self.byte_rate
                if byte_tokens > self.byte_burst:
                    byte_tokens = self.byte_burst
            else:
                # A clock that steps backwards refills nothing, and keeps
                # the later stamp so that stepping forward again does not
                # count the same time twice.
                now = last
        if tokens < 1.0:
            table[key] = (tokens, byte_tokens, now)
            return Reason.RATE_LIMIT
        if byte_tokens < size:
            table[key] = (tokens, byte_tokens, now)
            return Reason.BYTE_RATE
        table[key] = (tokens - 1.0, byte_tokens - size, now)
        return None

    def allow(self, key: Hashable, now: float, size: int = 0) -> bool:
        """
        `spend`, answering whether the reply may be sent.
        """
        return self.spend(key, now, size) is None

    def adjust(self, key: Hashable, change: int) -> bool:
        """
        Change what a reply that `spend` let through costs in bytes, once
        its real size is known (uppercasing can grow or shrink a text).

        :param key: the source `spend` was just called for.
        :param change: bytes to spend (positive) or give back (negative).
        :return: whether the bucket held ``change`` more byte tokens (if
            not, nothing is spent and the reply must not be sent).
        """
        entry = self._table.get(key)
        if entry is None:
            return True  # forgotten meanwhile (cannot happen within one datagram)
        tokens, byte_tokens, last = entry
        if byte_tokens < change:
            return False
        self._table[key] = (tokens, min(self.byte_burst, byte_tokens - change), last)
        return True
