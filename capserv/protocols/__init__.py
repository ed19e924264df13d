"""
The lesson's protocols as a library: the uppercasing codec, the
configuration, the TCP and UDP protocols, their limits and their accounting.

Nothing here imports the daemon, the metrics site, the client or the native
transports; ``capserv`` re-exports the public names.
"""
