"""
Peer: the tutorial-level Twisted server, ``self.transport.write(data.upper())``.

Usage: python twisted_tutorial.py PORT
"""

import sys

from twisted.internet import protocol, reactor


class Upper(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data.upper())


class UpperDatagram(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data.upper(), addr)


port = int(sys.argv[1])
reactor.listenTCP(port, protocol.Factory.forProtocol(Upper), backlog=1024, interface="127.0.0.1")
reactor.listenUDP(port, UpperDatagram(), interface="127.0.0.1")
reactor.callWhenRunning(print, "ready", flush=True)
reactor.run()
