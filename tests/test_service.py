"""The service under gunicorn, on a private redis-server: JSON logs, metrics across
workers, readiness through a Redis outage."""

from __future__ import annotations

import json
import re
import socket
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


def test_a_busy_gevent_worker_answers_every_request_while_redis_is_healthy(service):
    """Under load a gevent worker has many requests between sending a Redis command and
    reading its reply (each waits for its turn on the CPU), every one holding a pooled
    connection: the pool must be sized to the worker's concurrency, or a healthy Redis
    gives 503 pool_exhausted (with the pool at its old 50: 803 of these 1,500 requests)."""
    instance = service(workers=1)
    status, _, created = instance.request("POST", API, {"user_id": "busy", "token": CANARY, "expires_at": future()})
    assert status == 201
    path = f"{API}/{created['id']}"
    with ThreadPoolExecutor(max_workers=150) as clients:
        statuses = list(clients.map(lambda _: instance.request("GET", path)[0], range(1500)))
    log = instance.stop()
    assert statuses.count(200) == len(statuses), {status: statuses.count(status) for status in set(statuses)}
    assert "pool_exhausted" not in log


class Responses:
    """Whole HTTP/1.1 responses (each with a Content-Length) read off one connection; bytes
    of the next responses that came with a read are kept for the next call."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.buffered = b""

    def _more(self) -> None:
        chunk = self.connection.recv(65536)
        assert chunk, "the server closed the connection"
        self.buffered += chunk

    def read(self, count: int) -> None:
        for _ in range(count):
            while b"\r\n\r\n" not in self.buffered:
                self._more()
            head, _, self.buffered = self.buffered.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
            while len(self.buffered) < length:
                self._more()
            self.buffered = self.buffered[length:]


def test_a_client_with_requests_queued_on_its_connection_does_not_hold_a_gevent_worker(service):
    """200 pipelined health checks on one keep-alive connection are all in the worker's
    hands at once, and none of them waits on anything: without a turn between them, the
    worker would serve all 200 before a request on another connection."""
    instance = service(workers=1)
    port = instance.port

    def request(request_id: str) -> bytes:
        return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n\r\n".encode()

    with socket.create_connection(("127.0.0.1", port)) as busy, socket.create_connection(("127.0.0.1", port)) as other:
        busy_responses, other_responses = Responses(busy), Responses(other)
        for connection, responses, name in (
            (busy, busy_responses, "busy-warm"), (other, other_responses, "other-warm"),
        ):
            connection.sendall(request(name))  # both connections being served
            responses.read(1)
        busy.sendall(b"".join(request(f"busy-{number}") for number in range(200)))
        busy_responses.read(1)  # the worker is busy with them
        other.sendall(request("other"))
        other_responses.read(1)
        busy_responses.read(199)
    log = instance.stop()
    order = [line["request_id"] for line in map(json.loads, filter(None, log.splitlines()))
             if line.get("logger") == "gunicorn.access" and line.get("request_id", "").startswith(("busy-", "other"))]
    assert len(order) == 203, order
    served_before = order.index("other") - order.index("busy-0")
    assert served_before < 100, f"{served_before} of the busy connection's requests were served first"
