"""Prometheus metrics at ``/metrics`` (prometheus-client).

Per-process metrics (requests, store operations, Redis errors) live in prometheus-client's
own registry; under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (set per instance by
``gunicorn.conf.py``) switches them to its multiprocess mode, so one scrape adds up every
worker. Store-wide figures (records held, records per encryption key id, index entries
pruned) are read from Redis by one cheap script (see ``TokenStore.census``), at most once
per CENSUS_SECONDS per process however often it is scraped; every instance reports the
same store-wide values, so aggregate them with ``max``. With API keys (or metrics keys)
configured, a scrape needs one of them (``sessionsvc.edge``).

Labels are route templates, methods, statuses, operation names, error kinds and key ids:
never a token, a user id or a raw path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .logs import ROUTE_ENVIRON_KEY, UNMATCHED_ROUTE
from .ops import Reused
from .store import StoreUnavailable
from .vault import KeyCensus, TokenVault

METRICS_PATH = "/metrics"
# How long one process reuses its last store census: a scrape costs Redis at most one
# census script per process in that time.
CENSUS_SECONDS = 5.0

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUESTS = Counter(
    "sessionsvc_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "sessionsvc_http_request_duration_seconds",
    "Time from the request reaching the app to its response.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
STORE_LATENCY = Histogram(
    "sessionsvc_store_operation_duration_seconds",
    "Duration of store operations (one Redis round-trip each, retries included).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "sessionsvc_redis_errors", "Store operations that failed, by kind of Redis error.", ["kind"]
)

metrics = Blueprint("metrics", __name__)


# Labelled children, looked up once per label set (labels() takes a lock and builds a
# key each call). The label sets are few and fixed: routes, methods, statuses, operations.
# Any other method a client invents is counted as OTHER: labels must not grow without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_store_children: dict[str, Any] = {}


def observe_store(operation: str, seconds: float, error_kind: str | None) -> None:
    """The store's observer: latency per operation, and failures by kind."""
    child = _store_children.get(operation)
    if child is None:
        child = _store_children[operation] = STORE_LATENCY.labels(operation)
    child.observe(seconds)
    if error_kind is not None:
        REDIS_ERRORS.labels(error_kind).inc()


def per_key_id(family: Metric, counts: dict[str, int]) -> Metric:
    """`family` with one sample per encryption key id, in key id order."""
    for key_id, count in sorted(counts.items()):
        family.add_metric([key_id], count)
    return family


class StoreCollector:
    """Store-wide figures, read from Redis when scraped (reused for CENSUS_SECONDS)."""

    def __init__(self, vault: TokenVault):
        self.vault = vault
        self.census = Reused(self._read_census, CENSUS_SECONDS)

    def _read_census(self) -> KeyCensus | None:
        try:
            return self.vault.census()
        except StoreUnavailable:
            return None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sessionsvc_store_up", "1 when the scrape could read the store.")
        census = self.census()
        if census is None:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("sessionsvc_records", "Records held (store-wide).", value=census.records)
        yield per_key_id(GaugeMetricFamily(
            "sessionsvc_records_by_key_id",
            "Records per encryption key id (store-wide): exact up to 200 records, "
            "scaled from a uniform sample of 200 above; `stats` gives exact counts.",
            labels=["key_id"],
        ), census.by_key_id)
        yield per_key_id(CounterMetricFamily(
            "sessionsvc_encryptions",
            "Tokens sealed per encryption key id (store-wide, kept in Redis): AES-GCM's random-nonce "
            "budget spent; rotate past SESSIONSVC_ROTATE_KEY_AFTER.",
            labels=["key_id"],
        ), census.encryptions)
        yield CounterMetricFamily(
            "sessionsvc_index_entries_pruned",
            "Index entries of expired records pruned (store-wide, kept in Redis).",
            value=census.pruned,
        )


@metrics.get(METRICS_PATH)
def scrape() -> Response:
    store_registry = current_app.extensions["sessionsvc.store_metrics"]
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiprocess_dir:
        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry, path=multiprocess_dir)
    else:
        process_registry = REGISTRY
    body = generate_latest(process_registry) + generate_latest(store_registry)
    return Response(body, content_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Counts and times every response by method, route template and status, at the WSGI
    layer: the route is what the app left in the environ (``logs.ROUTE_ENVIRON_KEY``), the
    status is what it started the response with. No Flask hook, no request-local lookups."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        started = time.perf_counter()
        statuses: list[str] = []

        def start_and_note_status(status: str, headers: list, exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start_and_note_status)
        if statuses:
            method = environ.get("REQUEST_METHOD", "")
            labels = (
                method if method in KNOWN_METHODS else "OTHER",
                environ.get(ROUTE_ENVIRON_KEY, UNMATCHED_ROUTE),
                int(statuses[-1][:3]),
            )
            children = _request_children.get(labels)
            if children is None:
                names = (labels[0], labels[1], str(labels[2]))
                children = _request_children[labels] = (HTTP_REQUESTS.labels(*names), HTTP_LATENCY.labels(*names))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
        return body


def install(app: Flask) -> None:
    """Serve /metrics; the vault is in app.extensions already (its census is read when scraped)."""
    store_registry = CollectorRegistry(auto_describe=False)
    store_registry.register(StoreCollector(app.extensions["sessionsvc"]))
    app.extensions["sessionsvc.store_metrics"] = store_registry
    app.register_blueprint(metrics)
    app.wsgi_app = RequestMetrics(app.wsgi_app)
