"""
The client API from an asyncio program (docs/client.rst), runnable:

    python docs/examples/client_asyncio.py [PORT]

Twisted's asyncio reactor runs on the program's event loop; each Deferred
becomes an asyncio future with ``asFuture(loop)``, and asyncio's timeouts
and cancellation reach the Deferred, which closes the connection.
"""

import asyncio
import sys

from twisted.internet import asyncioreactor

loop = asyncio.new_event_loop()
asyncioreactor.install(loop)

from twisted.internet import defer, endpoints, reactor, task  # noqa: E402

from capserv.client import tcp_request  # noqa: E402


async def main(port: int) -> None:
    endpoint = endpoints.HostnameEndpoint(reactor, "127.0.0.1", port)
    print(await tcp_request(endpoint, b"from asyncio").asFuture(loop))
    try:
        reply = tcp_request(endpoint, b"in time").asFuture(loop)
        print(await asyncio.wait_for(reply, timeout=5))
    except asyncio.TimeoutError:  # the connection is closed already
        print("no reply within 5 seconds")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50007
    task.react(lambda _: defer.Deferred.fromFuture(loop.create_task(main(port))))
