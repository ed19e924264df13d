"""
``/healthz`` (200 while serving, draining included) and ``/readyz`` (200 only when every
listener listens and no stop has begun, else 503); the body is the state.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

__all__ = ["HealthResource", "ReadinessResource", "health_children"]


class HealthResource(Resource):
    """``/healthz`` of ``service`` (its ``state``; `ReadinessResource` also asks ``ready``)."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
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
    def status(self) -> int:
        return 200 if self.service.ready else 503


def health_children(service: Any) -> dict[bytes, IResource]:
    """The resources to mount beside ``/metrics``."""
    return {b"healthz": HealthResource(service), b"readyz": ReadinessResource(service)}
