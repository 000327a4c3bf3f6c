"""Prometheus metrics of one node, served at ``/metrics`` over HTTP.

Every node has its own registry (tests run several nodes in one process). Names follow
Prometheus conventions: a ``tandem_`` prefix, base units (seconds, bytes), ``_total`` on counters.
Two ways in:

- events observed when they happen (``observe_generation``, ``observe_http``): request counts,
  tokens, latency histograms, bytes per link, acceptance per (drafter, target) pair;
- values read at scrape time from counters a node already keeps (``watch``): the cloud engine's
  rounds and batches, the coordinator's registry, queue depths, RTTs. No second bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("node_runtime.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A watched value: one number, or numbers by label values (a tuple, in the order of the labels).
Values = float | Mapping[tuple[str, ...], float]


@dataclass(frozen=True)
class Watched:
    """A metric read at scrape time."""

    name: str  # without _total; counters get it added
    help: str
    kind: str  # counter or gauge
    labels: tuple[str, ...]
    read: Callable[[], Values]


class _WatchCollector(Collector):
    """Yields every watched metric's current value; a failing reader is logged and skipped."""

    def __init__(self) -> None:
        self.watched: list[Watched] = []

    def collect(self) -> Iterator[Metric]:
        for w in self.watched:
            try:
                values = w.read()
            except Exception:  # a scrape must never take the node down
                log.exception("metric_read_failed", extra={"fields": {"metric": w.name}})
                continue
            family = CounterMetricFamily if w.kind == "counter" else GaugeMetricFamily
            metric = family(w.name, w.help, labels=list(w.labels))
            if isinstance(values, Mapping):
                for key, value in values.items():
                    metric.add_metric(list(key), float(value))
            else:
                metric.add_metric([], float(values))
            yield metric


@dataclass(frozen=True)
class GenerationFigures:
    """What one finished generation adds to the metrics (an edge's Solve, say)."""

    kind: str  # solve, reason, chat, completion
    mode: str  # edge-only, cloud-only, speculation
    generated: int
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    prompt: int = 0
    wall_s: float = 0.0
    ttft_s: float = 0.0
    drafter: str = ""
    target: str = ""  # the model that verified or generated; "" for edge-only
    peer: str = ""  # the cloud the bytes went to
    bytes_sent: int = 0
    bytes_received: int = 0


class NodeMetrics:
    """One node's registry and the metrics every role shares."""

    def __init__(self, role: str, node_id: str = "") -> None:
        self.role = role
        r = self.registry = CollectorRegistry()
        self._watch = _WatchCollector()
        r.register(self._watch)
        info = Gauge(
            "tandem_node_info", "Always 1; labels name the node", ["role", "node_id"], registry=r
        )
        info.labels(role, node_id).set(1)
        self.node_info = info
        self.requests = Counter(
            "tandem_requests",
            "Requests finished, by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "tandem_tokens",
            "Tokens by kind: prompt, generated, drafted, accepted",
            ["kind"],
            registry=r,
        )
        self.rounds = Counter(
            "tandem_verify_rounds", "Verify rounds of token speculation", registry=r
        )
        self.mode_requests = Counter(
            "tandem_mode_requests",
            "Finished generations by the mode that finished them",
            ["mode"],
            registry=r,
        )
        self.pair_drafted = Counter(
            "tandem_pair_drafted_tokens",
            "Drafted tokens by (drafter, target) pair",
            ["drafter", "target"],
            registry=r,
        )
        self.pair_accepted = Counter(
            "tandem_pair_accepted_tokens",
            "Accepted draft tokens by (drafter, target) pair",
            ["drafter", "target"],
            registry=r,
        )
        self.acceptance = Gauge(
            "tandem_acceptance_ratio",
            "Accepted / drafted tokens since start, by pair",
            ["drafter", "target"],
            registry=r,
        )
        self.latency = Histogram(
            "tandem_request_duration_seconds",
            "End-to-end request time",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Time to the first committed token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.link_bytes = Counter(
            "tandem_link_bytes",
            "Bytes on each link, by peer and direction",
            ["peer", "direction"],
            registry=r,
        )
        self.http = Counter(
            "tandem_http_requests",
            "HTTP API requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "tandem_http_request_duration_seconds",
            "HTTP API request time",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._pairs: dict[tuple[str, str], list[int]] = {}

    def watch(
        self,
        name: str,
        help: str,
        read: Callable[[], Values],
        kind: str = "gauge",
        labels: tuple[str, ...] = (),
    ) -> None:
        """Publish ``read()`` under ``name`` at every scrape (counters: a running total)."""
        if kind not in ("gauge", "counter"):
            raise ValueError(f"kind: gauge or counter, got {kind!r}")
        self._watch.watched.append(Watched(name, help, kind, labels, read))

    def observe_generation(self, f: GenerationFigures, outcome: str = "ok") -> None:
        """Fold one finished generation in."""
        self.requests.labels(f.kind, outcome).inc()
        self.mode_requests.labels(f.mode).inc()
        for kind, n in (("prompt", f.prompt), ("generated", f.generated)):
            self.tokens.labels(kind).inc(n)
        for kind, n in (("drafted", f.drafted), ("accepted", f.accepted)):
            self.tokens.labels(kind).inc(n)
        self.rounds.inc(f.rounds)
        self.latency.labels(f.kind).observe(f.wall_s)
        if f.generated:
            self.ttft.observe(f.ttft_s)
        if f.drafted and f.target:
            pair = (f.drafter, f.target)
            self.pair_drafted.labels(*pair).inc(f.drafted)
            self.pair_accepted.labels(*pair).inc(f.accepted)
            totals = self._pairs.setdefault(pair, [0, 0])
            totals[0] += f.drafted
            totals[1] += f.accepted
            self.acceptance.labels(*pair).set(totals[1] / totals[0])
        if f.peer:
            self.link_bytes.labels(f.peer, "sent").inc(f.bytes_sent)
            self.link_bytes.labels(f.peer, "received").inc(f.bytes_received)

    def observe_failure(self, kind: str, outcome: str) -> None:
        """A request that ended with an error status (``outcome`` names it)."""
        self.requests.labels(kind, outcome).inc()

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request of the API."""
        self.http.labels(route, str(status)).inc()
        self.http_latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)


async def metrics_handler(metrics: NodeMetrics, _request: web.Request) -> web.Response:
    """``GET /metrics``."""
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


class MetricsServer:
    """A small HTTP server with ``/metrics`` alone, for nodes without the API (the cloud)."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        """Listen; returns ``host:port``."""
        app = web.Application()

        async def handle(request: web.Request) -> web.Response:
            return await metrics_handler(self.metrics, request)

        app.router.add_get("/metrics", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.address = f"{self.host}:{bound_port(site)}"
        return self.address

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def bound_port(site: web.TCPSite) -> int:
    """The port a site listens on (the one picked when it was asked for 0)."""
    server: Any = site._server  # aiohttp keeps the asyncio server here
    return int(server.sockets[0].getsockname()[1])
