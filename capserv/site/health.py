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

from collections.abc import Callable
from typing import Protocol

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

__all__ = [
    "DRAINING",
    "READY",
    "STARTING",
    "STOPPING",
    "HealthResource",
    "Readiness",
    "ReadinessResource",
    "health_children",
]

#: Listeners are bound; the reactor has not run yet.
STARTING = "starting"
#: Every listener is listening and no stop has begun.
READY = "ready"
#: A stop has begun: serving on, for ``--drain-delay``, while not ready.
DRAINING = "draining"
#: The graceful stop: listeners closed, open connections finishing.
STOPPING = "stopping"


class Readiness(Protocol):
    """What the endpoints ask: `capserv.daemon.service.CapservService` is one."""

    @property
    def state(self) -> str:
        """One of `STARTING`, `READY`, `DRAINING`, `STOPPING`."""


class _PlainText(Resource):
    """A leaf answering GET (and HEAD) with a status and one line of text."""

    isLeaf = True

    def __init__(self, state: Callable[[], str]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._state = state

    def answer(self, state: str) -> int:
        """The HTTP status for ``state``."""
        raise NotImplementedError

    def render_GET(self, request: Request) -> bytes:
        state = self._state()
        request.setResponseCode(self.answer(state))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"{state}\n".encode()


class HealthResource(_PlainText):
    """
    ``/healthz``: 200 while the process serves (whatever its readiness),
    with its state as the body.
    """

    def answer(self, state: str) -> int:
        return 200


class ReadinessResource(_PlainText):
    """
    ``/readyz``: 200 ``ready`` when every listener is listening and no stop
    has begun; 503 with the reason (``starting``, ``draining``,
    ``stopping``) otherwise.
    """

    def answer(self, state: str) -> int:
        return 200 if state == READY else 503


def health_children(service: Readiness) -> dict[bytes, IResource]:
    """
    The resources to mount beside ``/metrics`` for ``service``:
    ``{b"healthz": ..., b"readyz": ...}``.
    """

    def state() -> str:
        return service.state

    return {b"healthz": HealthResource(state), b"readyz": ReadinessResource(state)}
