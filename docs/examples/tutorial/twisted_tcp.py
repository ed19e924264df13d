"""
The lesson's TCP server as a Twisted Protocol and its Factory: the smallest
program that works, and serves every client at once.

An endpoint does the lesson's ``bind``, ``listen`` and ``accept``; the
Factory builds one ``Upper`` protocol for each accepted connection;
``dataReceived`` is the lesson's ``recv`` and ``transport.write`` its
``send``.  Nothing here waits for one client, so a silent client stalls no
one.
"""

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import react

serverHost = "127.0.0.1"
serverPort = 50007


def upper(data):
    """The uppercase of UTF-8 bytes; bytes that are not UTF-8 are kept as they are."""
    return data.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape")


class Upper(Protocol):
    def dataReceived(self, data):
        self.transport.write(upper(data))


async def main(reactor):
    endpoint = serverFromString(reactor, f"tcp:{serverPort}:interface={serverHost}")
    try:
        await endpoint.listen(Factory.forProtocol(Upper))
    except CannotListenError as e:
        raise SystemExit(f"cannot listen on TCP {serverHost}:{serverPort}: {e.socketError.strerror}") from None
    print("The server is ready to receive (Ctrl-C stops it)", flush=True)
    await Deferred()  # serve until Ctrl-C


react(main)
