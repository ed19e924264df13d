"""
Peer: the lesson's iterative socket servers, one client at a time.

TCP: accept, then recv and send back in capitals until the client closes,
then the next client (the lesson's loop, made to serve a client's whole
stream).  UDP: recvfrom, sendto, in a second thread.

Usage: python iterative.py PORT
"""

import sys
import threading
from socket import AF_INET, SO_REUSEADDR, SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET, socket

port = int(sys.argv[1])


def udp():
    server = socket(AF_INET, SOCK_DGRAM)
    server.bind(("127.0.0.1", port))
    while True:
        sentence, address = server.recvfrom(65535)
        server.sendto(sentence.upper(), address)


threading.Thread(target=udp, daemon=True).start()
server = socket(AF_INET, SOCK_STREAM)
server.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(1024)
print("ready", flush=True)
while True:
    connection, address = server.accept()
    try:
        while True:
            sentence = connection.recv(65536)
            if not sentence:
                break
            connection.sendall(sentence.upper())
    except OSError:
        pass  # the client reset the connection: on to the next one
    connection.close()
