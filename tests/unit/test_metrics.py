"""
`capserv.site.metrics`: ``/metrics`` renders the figures it is given (one
process's, or the supervisor's totals over its workers, added up at scrape
time) at once, in the text format or OpenMetrics.  In memory.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from capserv import CapservConfig
from capserv.site.metrics import CapservCollector

from ..support.daemon_fakes import Process, samples


class CollectorTests(SynchronousTestCase):
    """A scrape reads the figures it is given."""

    def test_one_process_reads_its_own_counters(self) -> None:
        """Without --workers a scrape reads the process's counters directly."""
        process = Process()
        process.serve(connections=4)
        process.open()
        figures = samples(CapservCollector(process.figures, CapservConfig()))
        self.assertEqual(figures[("capserv_connections_total", ())], 5)
        self.assertEqual(figures[("capserv_connections_active", ())], 1)
        self.assertEqual(figures[("capserv_workers", ())], 1)


class MetricsResourceTests(SynchronousTestCase):
    """``/metrics`` answers in the reactor's thread, at once."""

    def test_scrape_is_rendered_at_once_without_threads(self) -> None:
        """The answer comes back from ``render`` itself: no thread pool is
        involved (prometheus-client's WSGI resource answered later from a
        pool thread, and a stop with a scrape in flight hung), in the text
        format, or OpenMetrics when the scraper asks for it."""
        from twisted.web.test.requesthelper import DummyRequest

        from capserv.site.metrics import metrics_site

        process = Process()
        process.serve(connections=3)
        site = metrics_site(process.figures, CapservConfig())
        request = DummyRequest([b"metrics"])
        resource = site.getResourceFor(request)
        body = resource.render(request)
        self.assertIsInstance(body, bytes)
        self.assertIn(b"capserv_connections_total 3.0", body)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = site.getResourceFor(request).render(request)
        self.assertTrue(body.endswith(b"# EOF\n"), body[-40:])
        self.assertIn(b"openmetrics", request.responseHeaders.getRawHeaders(b"content-type")[0])


class ProxyHeaderMetricTests(SynchronousTestCase):
    """A haproxy: connection without a valid PROXY header is counted in the metrics by name."""

    def test_bad_header_counted_as_proxy_header(self) -> None:
        """
        capserv_connections_refused_total{limit="proxy_header"} counts a connection
        Twisted's PROXY wrapper closed for a bad header; it is not counted as served.
        """
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        process = Process()
        proxy = IPv4Address("TCP", "127.0.0.1", 40001)
        wrapper = HAProxyWrappingFactory(process.factory).buildProtocol(proxy)
        wrapper.makeConnection(StringTransport(peerAddress=proxy))
        wrapper.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        wrapper.connectionLost(Failure(ConnectionDone()))
        figures = samples(CapservCollector(process.figures, CapservConfig()))
        self.assertEqual(figures[("capserv_connections_refused_total", (("limit", "proxy_header"),))], 1)
        self.assertEqual(figures[("capserv_connections_total", ())], 0)
