"""
Which reactor runs: the global one looked up when needed (never at import
time), and the daemon's choice of it.

Importing ``twisted.internet.reactor`` installs the default reactor, so
whatever imports it first decides the event loop for the whole process.
The daemon therefore makes its choice (`choose_reactor`) as the first step
of ``makeService`` (and of a worker's `capserv.daemon.workers.main`), and
`describe_reactor` names the one that runs in the start line, so an
operator can check.
"""

from __future__ import annotations

import sys
from typing import Any

from capserv.native import asyncio_loop
from capserv.protocols._twisted import global_reactor

__all__ = ["choose_reactor", "describe_reactor"]


def choose_reactor(uvloop: bool = True, name: str | None = None) -> Any:
    """
    Install the daemon's reactor unless one is installed already, and
    return the reactor that will run.

    A reactor is already installed when twistd was given ``--reactor``
    (twistd installs it while parsing its options): that choice wins.
    Otherwise, with ``uvloop`` true and uvloop importable, this installs
    Twisted's asyncio reactor on a uvloop event loop, which the benchmark
    measured fastest (``docs/benchmarks``); else twistd's default.

    :param uvloop: false for ``--no-uvloop``.
    :param name: a reactor to install by twistd's name for it (``epoll``),
        as a worker does to run its supervisor's ``--reactor``.
    """
    if name and "twisted.internet.reactor" not in sys.modules:
        from twisted.application.reactors import installReactor

        installReactor(name)
    elif uvloop and "twisted.internet.reactor" not in sys.modules:
        try:
            import uvloop as _uvloop
        except ImportError:
            pass
        else:
            from twisted.internet import asyncioreactor

            # Handed to the reactor, not made current through asyncio's policy system (deprecated in 3.14).
            asyncioreactor.install(_uvloop.new_event_loop())
    return global_reactor()


def describe_reactor(reactor: Any) -> str:
    """
    The reactor's class, and for the asyncio reactor the event loop's, as
    the start line shows them: ``AsyncioSelectorReactor on uvloop.Loop``.
    """
    name = type(reactor).__name__
    loop = asyncio_loop(reactor)
    if loop is not None:
        name += f" on {type(loop).__module__}.{type(loop).__name__}"
    return name
