"""
The contract's text rule as a reference the tests compare capserv with:
decode, ``str.upper``, encode, with ``surrogateescape`` so that bytes not
valid in the encoding pass through unchanged.
"""

from __future__ import annotations


def reference(data: bytes, encoding: str = "utf-8") -> bytes:
    """What uppercasing the whole of ``data`` at once must give."""
    return data.decode(encoding, "surrogateescape").upper().encode(encoding, "surrogateescape")
