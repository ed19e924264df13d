"""The endpoint grammar shared by the daemon, the native endpoint and the client; sockets; TLS files."""
