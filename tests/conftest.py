"""
Shared pytest settings: hypothesis profiles, and the event loop under
pytest's asyncio reactor.

``CAPSERV_TEST_LOOP=uvloop`` with ``--reactor=asyncio`` runs the whole
suite's asyncio reactor on a uvloop event loop (as the daemon runs by
default), so the loopback tests exercise the native transports
(`capserv.native`) on uvloop's loop as well as asyncio's.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=False)
settings.load_profile("ci")

if os.environ.get("CAPSERV_TEST_LOOP") == "uvloop":
    # Before pytest-twisted installs the reactor, which makes its loop
    # through the policy.
    import asyncio

    import uvloop

    # Twisted 24.7 and later make the reactor's loop with new_event_loop()
    # (the policy's); older ones take get_event_loop() (the current one).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
