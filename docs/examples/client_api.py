"""
The client API example from docs/client.rst, runnable:

    python docs/examples/client_api.py [PORT]

Talks to capserv on 127.0.0.1 (port 50007 unless given).
"""

import sys

from twisted.internet import defer, endpoints, task

from capserv.client import ClientReactor, open_stream, tcp_request, udp_request


async def main(reactor: ClientReactor, port: int = 50007) -> None:
    endpoint = endpoints.HostnameEndpoint(reactor, "127.0.0.1", port)

    # One request: connect, send, half-close, collect the whole reply.
    print(await tcp_request(endpoint, "straße".encode()))

    # A streaming session: feed bytes, receive bytes, half-close.
    session = await open_stream(endpoint, lambda data: print("got", data))
    session.write(b"part one, ")
    session.write(b"part two")
    session.finish()
    await session.done

    # UDP with a timeout and retries; fails with NoReplyError.
    print(await udp_request(reactor, "127.0.0.1", port, b"datagram", timeout=1.0, retries=3))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50007
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, port)))
