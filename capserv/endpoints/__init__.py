"""
The endpoint grammar shared by the daemon and the client: descriptions such as
``tcp:50007:interface=127.0.0.1`` split as Twisted splits them, and whether
TLS is installed for ``ssl:`` and ``tls:``.
"""
