"""
Coercers for numeric command-line options, shared by ``twistd capserv`` and
``capserv-client``: a bad value's error names the option (Twisted's does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["number"]


def number(option: str, kind: type, minimum: float = 0, maximum: float | None = None) -> Callable[[str], Any]:
    """A coercer of ``--option``'s text to ``kind`` (``int`` or ``float``), from ``minimum`` to ``maximum``."""

    def coerce(value: str) -> Any:
        try:
            result = kind(value)
        except ValueError:
            raise ValueError(f"--{option}: {value!r} is not a {'whole ' if kind is int else ''}number") from None
        if result != result:
            raise ValueError(f"--{option}: {value!r} is not a number; write one such as 0 or 2.5")
        if maximum is not None and not minimum <= result <= maximum:
            raise ValueError(f"--{option}: {value!r} must be from {minimum:g} to {maximum:g}")
        if result < minimum:
            raise ValueError(f"--{option}: {value!r} must be >= {minimum:g}")
        if result == float("inf"):
            raise ValueError(f"--{option}: {value!r} must be a finite number (0 turns it off)")
        return result

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce
