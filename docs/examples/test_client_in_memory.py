"""
Testing a program that embeds capserv without sockets: capserv's server
factory and its client API connected in memory by Twisted's
``twisted.test.iosim``, on a fake clock.

    python -m twisted.trial docs/examples/test_client_in_memory.py
"""

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase

from capserv import UppercaseFactory
from capserv.client import tcp_request


class InMemoryTests(SynchronousTestCase):
    def test_request_and_reply(self) -> None:
        reactor = MemoryReactorClock()
        TCP4ServerEndpoint(reactor, 50007).listen(UppercaseFactory(clock=reactor))
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", 50007)

        # iosim's transports cannot half-close: the client then closes once
        # the reply's predicted length has arrived.
        reply = tcp_request(client, "straße".encode(), clock=reactor, half_close=False)
        pump = ConnectionCompleter(reactor).succeedOnce()
        assert pump is not None
        pump.flush()

        assert self.successResultOf(reply) == b"STRASSE"
