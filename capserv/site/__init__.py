"""The ``--metrics`` site (Prometheus metrics, ``/healthz``, ``/readyz``), loaded only when asked for."""
