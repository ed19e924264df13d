"""
Metrics that add up every process of ``--workers N``.

Each process counts in plain Python objects (`capserv.protocols.stats`), updated per
connection and datagram at no cost to metrics.  With ``--workers`` and
``--metrics``, every process also copies those figures into
prometheus-client metrics in the library's *multiprocess mode*: each
process's values live in memory-mapped files of its own in one private
folder, and the supervisor's ``/metrics`` reads every file through
prometheus-client's ``MultiProcessCollector``.  Counters add up over every
process that ever ran, so totals do not go down when a worker dies and is
replaced; gauges (``livesum``) add up over the processes still running, as
the supervisor marks a worker dead when it exits.

The copy (`MetricsMirror`) keeps the hot path as it is: a worker copies
every `MIRROR_INTERVAL` seconds and once more after its graceful stop
(`MirrorService`), the supervisor right before each scrape (`SharedMetrics`);
a worker's share of a scrape is at most one interval old, and a worker
killed outright (SIGKILL) loses at most its last interval.

Why multiprocess mode: it is prometheus-client's own, maintained way of
counting across processes (the one gunicorn deployments use), so capserv
has no aggregator of its own, and its files need no sockets or protocol
between the processes and outlive a worker that is killed.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "FOLDER_VARIABLE",
    "MIRROR_INTERVAL",
    "MetricsMirror",
    "MirrorService",
    "SharedMetrics",
    "use_folder",
    "worker_folder",
]

#: Seconds between a worker's copies of its figures into its metric files.
MIRROR_INTERVAL = 1.0
#: Where a worker keeps its metric files; set by the supervisor for its
#: workers only, so that an operator's own ``PROMETHEUS_MULTIPROC_DIR``
#: never turns the copying on.
FOLDER_VARIABLE = "CAPSERV_METRICS_DIR"
#: prometheus-client's variable for multiprocess mode and its folder.
PROMETHEUS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def use_folder(path: str) -> None:
    """
    Put this process's prometheus-client metrics in multiprocess mode, with
    their files in ``path``.

    prometheus-client chooses its mode when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; if something imported it before, the
    choice is made again, as that import would have made it with the
    variable set (metrics made before keep their values in memory).
    """
    os.environ[PROMETHEUS_VARIABLE] = path
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_folder() -> str | None:
    """
    In a worker started by a supervisor with ``--metrics``: the folder of
    the metric files, with this process put in multiprocess mode; else
    `None`.
    """
    path = os.environ.get(FOLDER_VARIABLE)
    if not path:
        return None
    use_folder(path)
    return path


class MetricsMirror:
    """
    Copy a collector's figures into prometheus-client metrics of the same
    names, labels and help texts: a counter grows by what its figure grew
    since the last copy (so a counter stays a counter, whose files add up
    across processes), a gauge is set to its figure and, in multiprocess
    mode, adds up over the processes alive (``livesum``).
    """

    def __init__(self, collector: Collector, registry: CollectorRegistry | None = None) -> None:
        """
        :param collector: what to copy, e.g. `capserv.site.metrics.CapservCollector`;
            its counter and gauge families are copied, other samples left out.
        :param registry: where the copies are registered; `None` (the
            daemon's choice) registers them nowhere: in multiprocess mode
            their files are what is read.
        """
        self.collector = collector
        self.registry = registry
        self._metrics: dict[str, Any] = {}
        self._copied: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def mirror(self) -> None:
        """Copy every figure now."""
        for family in self.collector.collect():
            for sample in family.samples:
                if family.type == "counter" and sample.name == family.name + "_total":
                    child = self._child(family, sample.labels)
                    key = (family.name, tuple(sample.labels.items()))
                    grown = sample.value - self._copied.get(key, 0.0)
                    if grown > 0:
                        child.inc(grown)
                        self._copied[key] = sample.value
                elif family.type == "gauge" and sample.name == family.name:
                    self._child(family, sample.labels).set(sample.value)

    def _child(self, family: Metric, labels: dict[str, str]) -> Any:
        """The metric (or its child for ``labels``) that mirrors ``family``."""
        metric = self._metrics.get(family.name)
        if metric is None:
            from prometheus_client import Counter, Gauge

            if family.type == "counter":
                metric = Counter(family.name, family.documentation, labelnames=list(labels), registry=self.registry)
            else:
                metric = Gauge(
                    family.name,
                    family.documentation,
                    labelnames=list(labels),
                    registry=self.registry,
                    multiprocess_mode="livesum",
                )
            self._metrics[family.name] = metric
        return metric.labels(**labels) if labels else metric


class MirrorService(Service):
    """
    In a worker: copy its figures at the start and every `MIRROR_INTERVAL`
    seconds while it serves and drains, then a last time once the reactor
    has stopped everything (after the graceful stop), so that its final
    counts outlive it.
    """

    _log = Logger(namespace="capserv.metrics")

    def __init__(self, mirror: MetricsMirror, reactor: Any, interval: float = MIRROR_INTERVAL) -> None:
        """
        :param reactor: the clock of the copies, whose ``after shutdown``
            event makes the last one.
        """
        self.mirror = mirror
        self.reactor = reactor
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self.mirror.mirror)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(self._failed)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.finish)

    def stopService(self) -> None:
        # The copies go on while open connections drain; `finish` ends them.
        Service.stopService(self)

    def finish(self) -> None:
        """Stop copying, after a last copy."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.mirror.mirror()

    def _failed(self, failure: Failure) -> None:
        self._loop = None
        self._log.error("This worker's metrics stopped updating: {error}", error=failure.getErrorMessage())


class SharedMetrics(Service):
    """
    In the supervisor of ``--workers``: the private folder where every
    process keeps its metric files, the collector that ``/metrics`` serves
    from them, and the bookkeeping for workers that exit.

    Making one creates the folder and puts this process in multiprocess mode
    (`use_folder`).  The folder is removed once the reactor has stopped
    everything (every worker has exited by then), or when the process exits
    if the reactor never ran.
    """

    _log = Logger(namespace="capserv.metrics")

    def __init__(self, mirror: MetricsMirror, reactor: Any) -> None:
        """
        :param mirror: this process's own figures, copied at each scrape.
        """
        self.mirror = mirror
        self.reactor = reactor
        self.path = tempfile.mkdtemp(prefix="capserv-metrics-")
        use_folder(self.path)
        atexit.register(self.remove)

    def worker_env(self) -> dict[str, str]:
        """The environment variables that make a worker keep its metric files here."""
        return {FOLDER_VARIABLE: self.path, PROMETHEUS_VARIABLE: self.path}

    def collector(self) -> Collector:
        """
        What ``/metrics`` serves: this process's figures copied at the
        scrape, then every process's files added up.
        """
        return _Scrape(self.mirror, self.path)

    def process_dead(self, pid: int) -> None:
        """A worker exited: its gauges stop counting, its counters keep counting."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        Service.startService(self)
        self._log.info("Metrics of every worker add up in {path}", path=self.path)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.remove)

    def remove(self) -> None:
        """Remove the folder and everything in it."""
        atexit.unregister(self.remove)
        shutil.rmtree(self.path, ignore_errors=True)


class _Scrape:
    """
    Copy the supervisor's own figures, then add up every process's files.

    Files still empty are left out: prometheus-client creates a file before
    it sizes it, and its collector fails the whole scrape on an empty one
    (prometheus/client_python#1199), which a worker killed at that instant
    would leave behind for good.
    """

    def __init__(self, mirror: MetricsMirror, path: str) -> None:
        self.mirror = mirror
        self.path = path

    def describe(self) -> Iterable[Metric]:
        """Nothing: a registry must not scrape (and so copy) to learn the names."""
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.mirror.mirror()
        files = [name for name in glob.glob(os.path.join(self.path, "*.db")) if _has_data(name)]
        metrics: Iterable[Metric] = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return metrics


def _has_data(name: str) -> bool:
    """Whether a metric file exists and has been sized (it never shrinks back)."""
    try:
        return os.path.getsize(name) > 0
    except OSError:
        return False
