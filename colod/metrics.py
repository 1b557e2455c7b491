# -*- test-case-name: tests.control.test_metrics -*-
"""Prometheus metrics over HTTP (``[metrics] listen``), built with prometheus_client.

Nothing is counted for the metrics alone: at each scrape the collector reads
what the engines keep anyway (their pause, bytes and pages histograms since
the start, checkpoints by trigger, link and protection) and the engine
errors colod.logs counts, so a scrape costs nothing between scrapes and
shows what ``colodctl status`` shows.  The page is made on the reactor's
thread (prometheus_client's own Twisted resource would read the engines
from a thread pool while they change).

The endpoint is off unless configured; it serves ``/metrics`` only, in
plain HTTP: bind it to an address only the scraper reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from colod.config import Config
from colod.control.status import Domain, engine_status
from colod.histogram import Histogram


class EngineCollector(Collector):
    """The metrics of this daemon's domains, read from their engines at each scrape."""

    def __init__(self, config: Config, domains: Sequence[Domain], errors: Mapping[str, int],
                 now: Callable[[], float]) -> None:
        """``errors`` counts the error events each domain's engine logged (colod.logs.LogControl.errors)."""
        self._config = config
        self._domains = domains
        self._errors = errors
        self._now = now

    def collect(self) -> Iterator[Any]:
        labels = ["domain"]
        pause = HistogramMetricFamily("colod_checkpoint_pause_seconds",
                                      "How long each checkpoint paused the primary's guest", labels=labels)
        sent = HistogramMetricFamily("colod_checkpoint_bytes",
                                     "Bytes each checkpoint sent on the peer link while the guest was paused",
                                     labels=labels)
        pages = HistogramMetricFamily("colod_checkpoint_pages",
                                      "Guest pages each checkpoint sent while the guest was paused",
                                      labels=labels)
        checkpoints = CounterMetricFamily("colod_checkpoints", "Checkpoints completed, by what started them "
                                          "(first, interval, request; primary on a secondary)",
                                          labels=["domain", "trigger"])
        errors = CounterMetricFamily("colod_replication_errors", "Errors that ended or stopped replication, "
                                     "as the engines logged them", labels=labels)
        failovers = CounterMetricFamily("colod_failovers", "Takeovers this node completed", labels=labels)
        linked = GaugeMetricFamily("colod_peer_link_up", "1 while the peer link is up", labels=labels)
        round_trip = GaugeMetricFamily("colod_peer_round_trip_seconds",
                                       "The peer link's round trip (the kernel's smoothed TCP figure)",
                                       labels=labels)
        protected = GaugeMetricFamily("colod_protected", "1 while the guest is protected", labels=labels)
        paused = GaugeMetricFamily("colod_checkpoints_paused", "1 while checkpoints are paused on request",
                                   labels=labels)
        now = self._now()
        for domain in self._domains:
            status = engine_status(domain, self._config, now)
            name = [status["domain"]]
            engine = domain.engine
            if engine is not None:
                for family, histogram in ((pause, engine.pauses.seconds), (sent, engine.pauses.bytes),
                                          (pages, engine.pauses.pages)):
                    _add_histogram(family, name, histogram)
            for trigger, count in status["checkpoint"]["by_trigger"].items():
                checkpoints.add_metric([*name, trigger], count)
            errors.add_metric(name, self._errors.get(status["domain"], 0))
            failovers.add_metric(name, int(status["failed_over"]))
            linked.add_metric(name, int(status["peer"]["linked"]))
            if status["peer"]["round_trip_ms"] is not None:
                round_trip.add_metric(name, status["peer"]["round_trip_ms"] / 1000)
            protected.add_metric(name, int(status["protected"]))
            paused.add_metric(name, int(status["checkpoints_paused"]))
        yield from (pause, sent, pages, checkpoints, errors, failovers, linked, round_trip, protected, paused)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, [(floatToGoString(bound), count) for bound, count in histogram.cumulative()],
                      histogram.sum)


class _MetricsPage(Resource):
    """``/metrics``: the registry's exposition, made on the reactor's thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def listen(reactor: Any, endpoint: str, collector: Collector) -> Deferred[IListeningPort]:
    """Serve ``collector``'s metrics at ``/metrics`` on the Twisted server endpoint string ``endpoint``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    root = Resource()
    root.putChild(b"metrics", _MetricsPage(registry))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # a scrape is not news, every 15 s
    return endpoints.serverFromString(reactor, endpoint).listen(site)
