"""
The lesson's UDP server as a Twisted DatagramProtocol: the smallest program
that works.

The reactor does the lesson's ``bind`` and ``recvfrom`` loop; Twisted calls
``datagramReceived`` once per datagram, and ``transport.write(data, address)``
is the lesson's ``sendto``.  Bytes that are not UTF-8 pass through unchanged
(``surrogateescape``) instead of raising.
"""

import sys

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol

serverHost = "127.0.0.1"
serverPort = 50007


def upper(data):
    """The uppercase of UTF-8 bytes; bytes that are not UTF-8 are kept as they are."""
    return data.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape")


class Upper(DatagramProtocol):
    def datagramReceived(self, data, address):
        self.transport.write(upper(data), address)


try:
    reactor.listenUDP(serverPort, Upper(), interface=serverHost)
except CannotListenError as e:
    sys.exit(f"cannot listen on UDP {serverHost}:{serverPort}: {e.socketError.strerror}")
print("The server is ready to receive (Ctrl-C stops it)", flush=True)
reactor.run()
