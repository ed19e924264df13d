"""
Per-source token buckets, the UDP reflection guard: a spoofed flood would aim
replies at a victim, so each source network gets a budget of datagrams and one
of reply bytes, in a table that forgets the least recently seen source once full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from capserv.protocols.stats import Reason

__all__ = ["TokenBuckets"]

_INF = float("inf")


class TokenBuckets:
    """
    A least-recently-seen table of (datagram, byte) token buckets by source.
    A rate of 0 turns its budget off: that bucket holds infinitely many tokens.
    """

    __slots__ = ("_table", "burst", "byte_burst", "byte_rate", "evictions", "max_size", "rate")

    def __init__(self, rate: float, burst: int, max_size: int, byte_rate: float = 0, byte_burst: int = 0) -> None:
        """
        :param rate: datagram tokens added per second, up to ``burst`` (a new
            source starts full); ``byte_rate`` and ``byte_burst`` likewise.
        :param max_size: the most sources remembered at once.
        """
        self.rate = float(rate)
        self.burst = float(burst) if rate > 0 else _INF
        self.byte_rate = float(byte_rate)
        self.byte_burst = float(byte_burst) if byte_rate > 0 else _INF
        self.max_size = max_size
        #: How many sources were forgotten to keep the table bounded.
        self.evictions = 0
        # OrderedDict: a dict finds its first key by scanning past deleted slots; this evicts in O(1).
        self._table: OrderedDict[Hashable, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def spend(self, key: Hashable, now: float, size: int = 0) -> Reason | None:
        """
        Spend one datagram token and ``size`` byte tokens of ``key``'s
        buckets if both hold enough, else nothing.

        :return: `None` if the reply may go, else `Reason.RATE_LIMIT` or `Reason.BYTE_RATE`.
        """
        table = self._table
        entry = table.get(key)
        if entry is None:
            tokens, byte_tokens = self.burst, self.byte_burst
            if len(table) >= self.max_size:
                table.popitem(last=False)
                self.evictions += 1
        else:
            table.move_to_end(key)
            tokens, byte_tokens, last = entry
            if now > last:
                elapsed = now - last
                # Comparisons rather than min(): this runs for every datagram.
                tokens += elapsed * self.rate
                if tokens > self.burst:
                    tokens = self.burst
                byte_tokens += elapsed * self.byte_rate
                if byte_tokens > self.byte_burst:
                    byte_tokens = self.byte_burst
            else:
                # A clock stepping back refills nothing; keeping the later stamp counts no time twice.
                now = last
        if tokens < 1.0:
            table[key] = (tokens, byte_tokens, now)
            return Reason.RATE_LIMIT
        if byte_tokens < size:
            table[key] = (tokens, byte_tokens, now)
            return Reason.BYTE_RATE
        table[key] = (tokens - 1.0, byte_tokens - size, now)
        return None

    def adjust(self, key: Hashable, change: int) -> bool:
        """
        Spend ``change`` more byte tokens (or give back, if negative) for the
        reply `spend` just let through, once uppercasing has set its size.

        :return: whether the bucket held them (if not, nothing is spent and the reply must not go).
        """
        entry = self._table.get(key)
        if entry is None:
            return True
        tokens, byte_tokens, last = entry
        if byte_tokens < change:
            return False
        self._table[key] = (tokens, min(self.byte_burst, byte_tokens - change), last)
        return True
