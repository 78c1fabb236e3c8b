"""Operations through a real gunicorn, on a private redis-server it may stop: JSON logs with
the request id, metrics added up across workers, readiness through a Redis outage (the same
rules in process: test_ops.py)."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import API, REDIS_SERVER, future
from redis_server import RedisServer, wait_until
from servers import Gunicorn

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary on this machine")

CANARY = "canary-Zx9q-" + "7" * 30
REQUESTS_LINE = re.compile(
    r'^sessionsvc_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.MULTILINE
)


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def service(redis_server, tmp_path):
    started: list[Gunicorn] = []

    def start(workers: int = 1, **environment: str) -> Gunicorn:
        instance = Gunicorn(
            tmp_path / f"gunicorn-{len(started)}.log",
            workers=workers,
            SESSIONSVC_REDIS_URL=redis_server.url,
            **environment,
        )
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def test_log_lines_are_json_and_carry_the_request_id(service, redis_server):
    instance = service()
    status, headers, created = instance.request(
        "POST",
        API + "?token=" + CANARY,
        {"user_id": "usr_logs", "token": CANARY, "expires_at": future()},
        {"X-Request-ID": "rid-create-1", "Authorization": "Bearer " + CANARY},
    )
    assert status == 201 and headers["X-Request-ID"] == "rid-create-1"
    assert instance.request("GET", f"{API}/{created['id']}", headers={"X-Request-ID": "rid-get-1"})[0] == 200
    redis_server.stop()
    status, _, _ = instance.request("GET", API, headers={"X-Request-ID": "rid-outage-1"})
    assert status == 503

    lines = [json.loads(line) for line in instance.stop().splitlines() if line.strip()]

    access = {line["request_id"]: line for line in lines if line["logger"] == "gunicorn.access"}
    created_line = access["rid-create-1"]
    assert (created_line["method"], created_line["route"], created_line["status"]) == ("POST", API, 201)
    assert created_line["path"] == API  # the path only: never the query string
    assert created_line["duration_ms"] > 0
    assert access["rid-get-1"]["route"] == API + "/<record_id>"
    assert access["rid-get-1"]["path"] == f"{API}/{created['id']}"
    assert access["rid-outage-1"]["status"] == 503
    outage = [line for line in lines if line["logger"] == "sessionsvc" and line.get("request_id") == "rid-outage-1"]
    assert outage and outage[0]["level"] == "WARNING"
    assert outage[0]["method"] == "GET" and outage[0]["route"] == API
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert CANARY not in json.dumps(lines)


def test_metrics_add_up_requests_from_two_workers_in_one_scrape(service, tmp_path):
    metrics_dir = tmp_path / "metrics"
    instance = service(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    sent = 0

    def workers_that_counted() -> set[str]:
        return {path.stem.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}

    deadline = time.monotonic() + 60  # a worker may still be booting on a loaded machine
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(workers_that_counted()) < 2 and time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: instance.request("GET", "/healthz")[0], range(20)))
            assert statuses == [200] * 20
            sent += 20
    assert len(workers_that_counted()) == 2, "the kernel never handed a connection to the second worker"

    status, headers, body = instance.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    # The start-up probe's one successful /healthz counts too.
    assert float(REQUESTS_LINE.search(body).group(1)) == sent + 1
    assert 'sessionsvc_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}' in body


def test_readiness_flips_when_redis_stops_and_back_when_it_returns(service, redis_server):
    instance = service()
    status, _, body = instance.request("GET", "/readyz")
    assert (status, body) == (200, {"status": "ok", "redis": "ok", "scripts": "loaded", "encryption_key": "ok"})

    redis_server.stop()

    def outage_reported():  # each worker reuses its last check for ops.READINESS_SECONDS
        answer = instance.request("GET", "/readyz")
        return answer if answer[0] == 503 else None

    status, headers, body = wait_until(outage_reported, timeout=5, what="readiness to report the outage")
    assert body["status"] == "unavailable" and body["redis"] in ("connection", "timeout")
    assert headers["Retry-After"] == "1"
    assert instance.request("GET", "/healthz")[0] == 200

    redis_server.start()  # same port, empty: no data, no scripts
    wait_until(lambda: instance.request("GET", "/readyz")[0] == 200, timeout=10, what="readiness to return")
    assert instance.request("GET", "/readyz")[2]["scripts"] == "loaded"
    status, _, _ = instance.request("POST", API, {"user_id": "usr_back", "token": "t" * 30, "expires_at": future()})
    assert status == 201
