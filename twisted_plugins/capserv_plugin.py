from twisted.application.service import ServiceMaker

capserv = ServiceMaker(
    "capserv",
    "capserv.tap",
    "The uppercase service of the socket-programming lesson (TCP and UDP).",
    "capserv",
)
