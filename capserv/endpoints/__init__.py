"""
The endpoint grammar shared by the daemon, the native endpoint and the
client; the one socket factory; whether TLS is installed.
"""
