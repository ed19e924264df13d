"""
Per-source token buckets with a bounded table, for the UDP reflection guard.

A UDP server answers whatever address a datagram claims to come from, so a
spoofed flood turns it into a reflector aimed at a victim.  Each source
address gets a bucket of ``burst`` tokens refilled at ``rate`` per second;
a datagram spends one token or is dropped.  The table forgets the source seen
least recently once it holds ``max_size`` addresses, so a flood from many
(spoofed) sources cannot grow memory without bound.
"""

from __future__ import annotations

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """
    A bounded, least-recently-seen table of token buckets keyed by address.
    """

    __slots__ = ("_table", "burst", "evictions", "max_size", "rate")

    def __init__(self, rate: float, burst: int, max_size: int) -> None:
        """
        :param rate: tokens added per second to each bucket.
        :param burst: the most tokens a bucket holds (and a new one starts
            with).
        :param max_size: the most addresses remembered at once.
        """
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_size = max_size
        #: How many addresses were forgotten to keep the table bounded.
        self.evictions = 0
        # Dicts keep insertion order; re-inserting on every hit makes the
        # first key the least recently seen.
        self._table: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, key: str, now: float) -> bool:
        """
        Spend one token of ``key``'s bucket if it has one.

        :param key: the source address.
        :param now: the current time in seconds (from the injected clock).
        :return: ``True`` if the datagram may be answered.
        """
        table = self._table
        entry = table.pop(key, None)
        if entry is None:
            tokens = self.burst
            if len(table) >= self.max_size:
                del table[next(iter(table))]
                self.evictions += 1
        else:
            tokens, last = entry
            if now > last:
                tokens = min(self.burst, tokens + (now - last) * self.rate)
            else:
                # A clock that steps backwards refills nothing, and keeps
                # the later stamp so that stepping forward again does not
                # count the same time twice.
                now = last
        if tokens >= 1.0:
            table[key] = (tokens - 1.0, now)
            return True
        table[key] = (tokens, now)
        return False
