"""
Shared pytest settings: hypothesis profiles, and the event loop under
pytest's asyncio reactor.

With ``--reactor=asyncio`` the reactor runs on an event loop made here and
handed to Twisted explicitly, never through an event-loop policy or the
"current" loop (Python 3.14 deprecates the policy system, and Twisted
before 24.7 asks ``get_event_loop()`` when given no loop): asyncio's own
loop, or with ``CAPSERV_TEST_LOOP=uvloop`` uvloop's (as the daemon runs by
default), so the loopback tests exercise the native transports
(`capserv.native`) on both loops.
"""

import asyncio
import functools
import os

import pytest
import pytest_twisted
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=False)
settings.load_profile("ci")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop under the asyncio reactor: uvloop's when
    ``CAPSERV_TEST_LOOP=uvloop``, else asyncio's."""
    if os.environ.get("CAPSERV_TEST_LOOP") == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def install_asyncio_reactor() -> None:
    """pytest-twisted's ``--reactor=asyncio`` installer, with the loop passed:
    its own calls ``asyncioreactor.install()`` with none."""
    from twisted.internet import asyncioreactor

    # pytest-twisted's helper behind each of its installers: it also
    # records the reactor and makes the greenlet the tests run in.
    pytest_twisted._install_reactor(
        reactor_installer=functools.partial(asyncioreactor.install, new_event_loop()),
        reactor_type=asyncioreactor.AsyncioSelectorReactor,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before pytest-twisted's own pytest_configure, which installs the
    # reactor through this table.
    pytest_twisted.reactor_installers["asyncio"] = install_asyncio_reactor
