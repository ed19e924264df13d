"""
capserv: the uppercase network service of the classic socket-programming
lesson, as embeddable Twisted protocols and a ``twistd capserv`` daemon.

Importing capserv never imports the global reactor.
"""

from capserv._version import __version__
from capserv.protocols.config import CapservConfig, Clock, ConfigError
from capserv.protocols.stats import Reason, TCPStats, UDPStats
from capserv.protocols.tcp import UppercaseFactory, UppercaseProtocol
from capserv.protocols.text import Uppercaser, uppercase
from capserv.protocols.udp import MAX_DATAGRAM, DatagramState, UppercaseDatagramProtocol

__all__ = [
    "MAX_DATAGRAM",
    "CapservConfig",
    "Clock",
    "ConfigError",
    "DatagramState",
    "Reason",
    "TCPStats",
    "UDPStats",
    "UppercaseDatagramProtocol",
    "UppercaseFactory",
    "UppercaseProtocol",
    "Uppercaser",
    "__version__",
    "uppercase",
]
