"""
The ``--metrics`` site: Prometheus metrics, ``/healthz`` and ``/readyz``.
Loaded only when the daemon is asked for it.
"""
