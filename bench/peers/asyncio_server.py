"""
Peer: the uppercase service as a plain asyncio Protocol (TCP and UDP), on
the default event loop or on uvloop.

Usage: python asyncio_server.py PORT [--uvloop]
"""

import asyncio
import sys


class Upper(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())

    def eof_received(self):
        return False  # close once everything is sent


class UpperDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upper, "127.0.0.1", port, backlog=1024)
    await loop.create_datagram_endpoint(UpperDatagram, local_addr=("127.0.0.1", port))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        # uvloop's own runner: no event-loop policy (deprecated in Python 3.14).
        uvloop.run(main(int(sys.argv[1])))
    else:
        asyncio.run(main(int(sys.argv[1])))
