"""
Peer: the lesson's last slide, "a concurrent server, that makes a copy of
itself or child to deal with each client", as the lesson would write it with
the standard library: ``socketserver.ForkingTCPServer`` (a process per
client) or ``socketserver.ThreadingTCPServer`` (a thread per client).  TCP
only.  The handler is the iterative peer's loop: recv and send back in
capitals until the client closes.

``tuned`` raises the two standard-library defaults that throttle these
servers before the model itself does: the listen backlog
(``request_queue_size``, 5) becomes 1024 like the other peers', and the
forking server's cap of 40 children at a time (``max_children``; the 41st
client waits for one of them to finish) is lifted.

Usage: python socketserver_server.py PORT forking|threading [tuned]
"""

import os
import signal
import socketserver
import sys


class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            try:
                sentence = self.request.recv(65536)
            except OSError:
                return  # the client reset the connection
            if not sentence:
                return
            self.request.sendall(sentence.upper())


def main():
    port, kind = int(sys.argv[1]), sys.argv[2]
    tuned = sys.argv[3:] == ["tuned"]
    base = {"forking": socketserver.ForkingTCPServer, "threading": socketserver.ThreadingTCPServer}[kind]

    class Server(base):
        allow_reuse_address = True
        if tuned:
            request_queue_size = 1024
            max_children = sys.maxsize
            daemon_threads = True

    if kind == "forking":
        # Not the lesson's, the benchmark's: a stopped parent takes its
        # children (one per open connection) with it.  One process group
        # and killpg, not a walk over server.active_children: a handler
        # that runs while collect_children has reaped a child but not yet
        # forgotten it would get ProcessLookupError, which
        # collect_children's "except OSError: pass" swallows, and the
        # server would go on serving.
        os.setpgrp()
        signal.signal(signal.SIGTERM, lambda signum, frame: os.killpg(0, signal.SIGKILL))
    server = Server(("127.0.0.1", port), Upper)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
