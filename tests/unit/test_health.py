"""
`capserv.site.health`: ``/healthz`` and ``/readyz`` answer by the service's
state, beside ``/metrics`` on the daemon's metrics site.  In memory.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from capserv.daemon.service import DRAINING, READY, STARTING, STOPPING, CapservService
from capserv.site.health import HealthResource, ReadinessResource
from capserv.tap import makeService

from ..support.daemon_fakes import LOCAL, STOP_SIGNALS, RecordingNotifier, parse, without_sockets


class _State:
    """A service that is in one state."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.ready = state == READY


class EndpointTests(SynchronousTestCase):
    """``/healthz`` and ``/readyz``: status codes and bodies, by state."""

    def get(self, resource: Any) -> tuple[int, bytes]:
        request = DummyRequest([b""])
        body = resource.render(request)
        return request.responseCode, body

    def test_readiness_by_state(self) -> None:
        """/readyz: 200 "ready" when ready, 503 with the reason otherwise."""
        for state, code in [(READY, 200), (STARTING, 503), (DRAINING, 503), (STOPPING, 503)]:
            self.assertEqual(self.get(ReadinessResource(_State(state))), (code, f"{state}\n".encode()))

    def test_health_while_serving(self) -> None:
        """/healthz: 200 in every state the process serves in, draining included."""
        for state in (STARTING, READY, DRAINING, STOPPING):
            self.assertEqual(self.get(HealthResource(_State(state))), (200, f"{state}\n".encode()))

    def test_plain_text_not_cached(self) -> None:
        """The answer is plain text that no cache keeps."""
        request = DummyRequest([b""])
        ReadinessResource(_State(READY)).render(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_mounted_beside_metrics(self) -> None:
        """The daemon's metrics site serves both beside /metrics, following the service's state."""
        without_sockets(self)
        reactor = MemoryReactorClock()
        options = parse("--listen", LOCAL, "--metrics", LOCAL, "--drain-delay=3")
        service = makeService(options, reactor=reactor)
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in previous.items()])
        service.privilegedStartService()
        service.startService()
        for f, args, kwargs in reactor.whenRunningHooks:
            f(*args, **kwargs)
        service.notifier = RecordingNotifier()
        site = _site_of(service)
        for path, expected in [(b"readyz", (200, b"ready\n")), (b"healthz", (200, b"ready\n"))]:
            request = DummyRequest([path])
            self.assertEqual(self.get(getChildForRequest(site.resource, request)), expected)
        self.assertIn(b"metrics", site.resource.children)
        service.stopService()
        readyz = getChildForRequest(site.resource, DummyRequest([b"readyz"]))
        healthz = getChildForRequest(site.resource, DummyRequest([b"healthz"]))
        self.assertEqual(self.get(readyz), (503, b"draining\n"))
        self.assertEqual(self.get(healthz), (200, b"draining\n"))
        reactor.advance(3)
        reactor.advance(0)


def _site_of(service: CapservService) -> Any:
    """The web site the metrics listener serves."""
    for child in service:
        factory = getattr(child, "factory", None)
        if factory is not None and hasattr(factory, "resource"):
            return factory
    raise AssertionError("no metrics site")
