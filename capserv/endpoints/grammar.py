"""
Endpoint description strings, read as Twisted reads them.

Twisted's endpoint strings separate their parts with colons and escape a
colon that belongs to a value with a backslash (``tcp6:50007:interface=\\:\\:1``).
The daemon's listeners, the native endpoints and capserv-client all split
them the same way, here.
"""

from __future__ import annotations

__all__ = ["split_description"]


def split_description(description: str) -> list[str]:
    """
    Split an endpoint string at its unescaped colons, removing the
    backslashes that escape (as Twisted reads them): ``tls:\\:\\:1:443``
    is ``["tls", "::1", "443"]``.
    """
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
