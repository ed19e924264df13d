"""
``/healthz`` (liveness: 200 while the process serves, draining included) and
``/readyz`` (200 only when every listener listens and no stop has begun, else
503, so a load balancer stops sending during ``--drain-delay``); each body
says the state: ``ready``, ``starting``, ``draining``, ``stopping``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

__all__ = ["HealthResource", "Readiness", "ReadinessResource", "health_children"]


class Readiness(Protocol):
    """What the resources ask: `capserv.daemon.service.CapservService` is one."""

    @property
    def state(self) -> str: ...

    @property
    def ready(self) -> bool: ...


class HealthResource(Resource):
    """``/healthz``: 200, with the state as the body."""

    isLeaf = True

    def __init__(self, service: Readiness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service

    def status(self) -> int:
        return 200

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.status())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"{self.service.state}\n".encode()


class ReadinessResource(HealthResource):
    """``/readyz``: 200 when ready; 503 otherwise."""

    def status(self) -> int:
        return 200 if self.service.ready else 503


def health_children(service: Readiness) -> dict[bytes, IResource]:
    """The resources to mount beside ``/metrics``."""
    return {b"healthz": HealthResource(service), b"readyz": ReadinessResource(service)}
