"""
Health checks for orchestrators and load balancers: ``/healthz`` and
``/readyz`` on the ``--metrics`` endpoint, beside ``/metrics``.

``/healthz`` (liveness) answers 200 while the process serves, draining
included: restarting a process because it drains would only cut its
connections.  ``/readyz`` (readiness) answers 200 only when every listener
is listening and no stop has begun, and 503 otherwise, so a load balancer
or a Kubernetes Service stops sending new connections during
``--drain-delay``.  Each answers a short plain-text body saying why:
``ready``, ``starting``, ``draining``, ``stopping``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

__all__ = ["HealthResource", "Readiness", "ReadinessResource", "health_children"]


class Readiness(Protocol):
    """What the endpoints ask: `capserv.daemon.service.CapservService` is one."""

    @property
    def state(self) -> str:
        """A word saying where the service is: ``starting``, ``ready``, ``draining``, ``stopping``."""

    @property
    def ready(self) -> bool:
        """Whether it should be sent new connections."""


class HealthResource(Resource):
    """``/healthz``: 200 while the process serves (whatever its readiness), with its state as the body."""

    isLeaf = True

    def __init__(self, service: Readiness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service

    def status(self) -> int:
        """The HTTP status to answer."""
        return 200

    def render_GET(self, request: Request) -> bytes:
        state = self.service.state
        request.setResponseCode(self.status())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"{state}\n".encode()


class ReadinessResource(HealthResource):
    """``/readyz``: 200 ``ready`` when the service is ready; 503 with its state otherwise."""

    def status(self) -> int:
        return 200 if self.service.ready else 503


def health_children(service: Readiness) -> dict[bytes, IResource]:
    """The resources to mount beside ``/metrics``: ``{b"healthz": ..., b"readyz": ...}``."""
    return {b"healthz": HealthResource(service), b"readyz": ReadinessResource(service)}
