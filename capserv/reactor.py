"""
The global reactor, looked up when needed and never at import time.

Importing ``twisted.internet.reactor`` installs the default reactor, so a
module that did it at import time would stop a program from choosing another
(asyncio, say) afterwards.  capserv asks for it only when a caller passes no
reactor or clock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["global_reactor"]


def global_reactor() -> Any:
    """
    Return the installed reactor (installing the default one if none is).
    """
    from twisted.internet import reactor

    return reactor
