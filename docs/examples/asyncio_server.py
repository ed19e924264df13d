"""
Serve capserv's TCP protocol from your own program on Twisted's asyncio
reactor.

    python docs/examples/asyncio_server.py [PORT]

Listens on 127.0.0.1 (port 50007 by default) until Ctrl-C.  A PORT that is
not 0-65535, or cannot be taken, is one line on stderr and exit status 2 or 1.
"""

import asyncio
import sys

from twisted.internet import endpoints
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.error import CannotListenError
from twisted.internet.main import installReactor
from twisted.internet.tcp import Port
from twisted.python.failure import Failure

from capserv import UppercaseFactory

# Install the asyncio reactor before anything imports the default one.
reactor = AsyncioSelectorReactor(asyncio.new_event_loop())
installReactor(reactor)


def main() -> int:
    text = sys.argv[1] if len(sys.argv) > 1 else "50007"
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        print(f"PORT must be a number from 0 to 65535, not {text!r}", file=sys.stderr)
        return 2
    port = int(text)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    status = 0

    def listening(listening_port: object) -> None:
        assert isinstance(listening_port, Port)
        print(f"serving on 127.0.0.1:{listening_port.getHost().port}", flush=True)

    def failed(failure: Failure) -> None:
        nonlocal status
        failure.trap(CannotListenError)
        error = failure.value
        assert isinstance(error, CannotListenError)
        reason = error.socketError
        print(f"cannot listen on 127.0.0.1:{port}: {getattr(reason, 'strerror', None) or reason}", file=sys.stderr)
        status = 1
        reactor.stop()

    def start() -> None:
        endpoint.listen(UppercaseFactory(clock=reactor)).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return status


if __name__ == "__main__":
    sys.exit(main())
