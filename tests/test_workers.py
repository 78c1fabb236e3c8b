"""The service's gunicorn worker classes (sessionsvc/workers.py). Requests gunicorn refuses
before the app sees them (a request line or headers over its limits, a request that is not
HTTP) are answered like every other error: the service's JSON error shape with the headers
every response carries, through each worker class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from werkzeug.http import HTTP_STATUS_CODES

from conftest import API
from servers import ROOT, Gunicorn, RawConnection
from sessionsvc.edge import API_CSP
from sessionsvc.workers import worker_class

CANARY = "eyJhbGciOiJIUzI1NiJ9.canary-token-never-echoed"


# SESSIONSVC_WORKER_CLASS, its threads, and the class gunicorn should then run.
WORKERS = {
    "gevent": ("gevent", "4", "sessionsvc.workers.GeventWorker"),
    "gthread": ("gthread", "4", "sessionsvc.workers.ThreadWorker"),
    "sync": ("sync", "1", "sessionsvc.workers.SyncWorker"),
}


@pytest.fixture(scope="module", params=list(WORKERS))
def server(request, tmp_path_factory):
    name, threads, expected_class = WORKERS[request.param]
    log_path = tmp_path_factory.mktemp(request.param) / "gunicorn.log"
    instance = Gunicorn(log_path, SESSIONSVC_WORKER_CLASS=name, SESSIONSVC_THREADS=threads).start()
    assert f"Using worker: {expected_class}" in log_path.read_text()
    yield instance
    instance.stop()


def test_short_worker_names_map_to_the_services_classes_and_others_pass_through():
    assert worker_class("gevent", 4) == "sessionsvc.workers.GeventWorker"
    assert worker_class("gthread", 4) == "sessionsvc.workers.ThreadWorker"
    assert worker_class("sync", 1) == "sessionsvc.workers.SyncWorker"
    assert worker_class("sync", 4) == "sessionsvc.workers.ThreadWorker"  # as gunicorn runs "sync" with threads
    assert worker_class("eventlet", 4) == "eventlet"
    assert worker_class("myapp.workers.Custom", 4) == "myapp.workers.Custom"


def test_gunicorns_master_can_import_the_worker_classes_without_redis_or_the_app():
    """gevent patches sockets in the worker, after the fork: the master must not have
    imported redis (or the app, which does) by then."""
    script = "import sys, sessionsvc.workers; print(sorted({'redis', 'sessionsvc.api'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def refusal(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """gunicorn's answer to a request it refuses, read to the end: nothing follows its body
    before the connection closes."""
    with RawConnection(port) as connection:
        connection.send(request)
        answer = connection.response()
        assert connection.rest() == b"", "bytes after the body of a refusal"
        return answer


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: tuple[int, ...]) -> dict:
    assert status in expected, (status, body[:300])
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"] == API_CSP
    assert headers["cache-control"] == "no-store"
    assert headers["x-request-id"]
    document = json.loads(body)
    assert list(document) == ["code", "status", "message"]
    assert document["code"] == status and document["status"] == HTTP_STATUS_CODES[status]
    assert document["message"] and CANARY not in document["message"]
    return document


def test_a_request_line_over_the_limit_is_a_json_414(server):
    user_id = CANARY + "u" * (4100 - len(CANARY))
    request = f"GET {API}?user_id={user_id} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    assert_json_error(*refusal(server.port, request), expected=(414,))
    assert server.request("GET", "/healthz")[0] == 200


def test_a_header_over_the_limit_is_a_json_431(server):
    request = f"GET {API} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CANARY}{'x' * 9000}\r\n\r\n".encode()
    assert_json_error(*refusal(server.port, request), expected=(431, 400))
    assert server.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize(
    "request_line",
    [b"GARBAGE\r\n\r\n", f"GET /?token={CANARY} NOT-HTTP/9\r\nHost: localhost\r\n\r\n".encode()],
    ids=["no-target", "bad-version"],
)
def test_a_request_that_is_not_http_is_a_json_400(server, request_line):
    assert_json_error(*refusal(server.port, request_line), expected=(400,))
    assert server.request("GET", "/healthz")[0] == 200


def test_no_refused_request_puts_its_text_in_the_log(server):
    for request in (
        f"GET /?token={CANARY} NOT-HTTP/9\r\nHost: localhost\r\n\r\n".encode(),
        f"GET /?user_id={CANARY}{'u' * 4100} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
        f"GET {API} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CANARY}{'x' * 9000}\r\n\r\n".encode(),
    ):
        refusal(server.port, request)
    assert server.request("GET", "/healthz")[0] == 200
    log = server.log_path.read_text()
    assert "refused by gunicorn (request text not logged)" in log
    assert CANARY not in log
