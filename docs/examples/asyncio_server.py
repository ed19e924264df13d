"""
Serve capserv's TCP protocol from your own program on Twisted's asyncio
reactor.

    python docs/examples/asyncio_server.py [PORT]

Listens on 127.0.0.1 (port 50007 by default) until Ctrl-C.  If the port
cannot be taken, says so in one line and exits with status 1.
"""

import asyncio
import sys

from twisted.internet import asyncioreactor

# Install the asyncio reactor before anything imports the default one.
asyncioreactor.install(asyncio.new_event_loop())

from twisted.internet import endpoints, reactor  # noqa: E402
from twisted.internet.error import CannotListenError  # noqa: E402

from capserv import UppercaseFactory  # noqa: E402


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50007
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    status = 0

    def listening(listening_port):
        print(f"serving on 127.0.0.1:{listening_port.getHost().port}", flush=True)

    def failed(failure):
        nonlocal status
        failure.trap(CannotListenError)
        reason = failure.value.socketError
        print(f"cannot listen on 127.0.0.1:{port}: {getattr(reason, 'strerror', None) or reason}", file=sys.stderr)
        status = 1
        reactor.stop()

    def start():
        endpoint.listen(UppercaseFactory(clock=reactor)).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return status


if __name__ == "__main__":
    sys.exit(main())
