"""Taking turns under gevent (sessionsvc/turns.py): a request starts only once the worker's
other ready greenlets have run, so no connection holds a worker. Then the same through a
real gunicorn gevent worker: 200 pipelined requests on one connection, 1,500 requests
from 150 clients."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import gevent
import gevent.socket
import pytest

from conftest import API, future, redis_url
from servers import Gunicorn, RawConnection
from sessionsvc import turns
from sessionsvc.turns import FairTurns


def answer(environ, start_response):
    return [b"ok"]


def test_back_to_back_requests_on_one_greenlet_let_a_ready_greenlet_run_in_between():
    """Its next request already there and nothing to wait on: without the turn the
    greenlet would serve it before anything else in the worker ran."""
    app, ran = FairTurns(answer), []

    def connection():
        app({}, None)
        gevent.spawn(ran.append, "other connection")
        app({}, None)
        ran.append("second request")

    gevent.spawn(connection).join()
    assert ran == ["other connection", "second request"]


def test_a_request_starts_only_after_a_connection_with_input_waiting_has_been_served():
    """The other connection's greenlet waits on its socket: it can run only once the event
    loop has polled for I/O. A yield that runs queued callbacks and no poll
    (``gevent.sleep(0)``) lets the busy connection serve dozens of requests first."""
    app, ran = FairTurns(answer), []
    incoming, client = gevent.socket.socketpair()

    def other_connection():
        incoming.recv(1)
        ran.append("other connection")

    def busy_connection():
        client.sendall(b"x")  # the other connection's request is in its socket
        for _ in range(100):
            app({}, None)
            ran.append("request")

    with incoming, client:
        waiting = gevent.spawn(other_connection)
        gevent.sleep(0.01)  # it waits on its socket
        gevent.spawn(busy_connection).join()
        waiting.join(timeout=5)
    assert ran.index("other connection") == 0, f"{ran.index('other connection')} requests were served first"


def test_a_request_whose_greenlet_waited_on_redis_since_its_previous_one_starts_at_once(monkeypatch):
    """A wait on a Redis reply took the greenlet through the event loop: a turn before its
    next request would only send that request behind every other connection's work."""
    monkeypatch.setattr(turns, "gevent_patched", lambda: True)
    app, ran = FairTurns(answer), []
    redis_call_observed = turns.observing_waits(lambda operation, seconds, kind: None)

    def connection():
        app({}, None)
        redis_call_observed("get", 0.001, None)
        gevent.spawn(ran.append, "other connection")
        app({}, None)
        ran.append("next request")
        app({}, None)  # that one waited on nothing: this one takes its turn
        ran.append("third request")

    gevent.spawn(connection).join()
    assert ran == ["next request", "other connection", "third request"]


# --- through a real gunicorn gevent worker ----------------------------------------------------

CANARY = "canary-Zx9q-" + "7" * 30


@pytest.fixture
def gevent_worker(real_redis, tmp_path):
    instance = Gunicorn(tmp_path / "gunicorn.log", SESSIONSVC_REDIS_URL=redis_url(real_redis),
                        SESSIONSVC_WORKER_CLASS="gevent").start()
    yield instance
    instance.stop()


def test_a_busy_gevent_worker_answers_every_request_while_redis_is_healthy(gevent_worker):
    """Under load a gevent worker has many requests between sending a Redis command and
    reading its reply (each waits for its turn on the CPU), every one holding a pooled
    connection: the pool must be sized to the worker's concurrency, or a healthy Redis
    gives 503 pool_exhausted (with the pool at its old 50: 803 of these 1,500 requests)."""
    body = {"user_id": "busy", "token": CANARY, "expires_at": future()}
    status, _, created = gevent_worker.request("POST", API, body)
    assert status == 201
    path = f"{API}/{created['id']}"
    with ThreadPoolExecutor(max_workers=150) as clients:
        statuses = list(clients.map(lambda _: gevent_worker.request("GET", path)[0], range(1500)))
    log = gevent_worker.stop()
    assert statuses.count(200) == len(statuses), {status: statuses.count(status) for status in set(statuses)}
    assert "pool_exhausted" not in log


def test_a_client_with_requests_queued_on_its_connection_does_not_hold_a_gevent_worker(gevent_worker):
    """200 pipelined health checks on one keep-alive connection are all in the worker's
    hands at once, and none of them waits on anything: without a turn between them, the
    worker would serve all 200 before a request on another connection."""
    port = gevent_worker.port

    def request(request_id: str) -> bytes:
        return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {request_id}\r\n\r\n".encode()

    with RawConnection(port) as busy, RawConnection(port) as other:
        for connection, name in ((busy, "busy-warm"), (other, "other-warm")):
            connection.send(request(name))  # both connections being served
            connection.response()
        busy.send(b"".join(request(f"busy-{number}") for number in range(200)))
        busy.response()  # the worker is busy with them
        other.send(request("other"))
        other.response()
        for _ in range(199):
            busy.response()
    log = gevent_worker.stop()
    order = [line["request_id"] for line in map(json.loads, filter(None, log.splitlines()))
             if line.get("logger") == "gunicorn.access" and line.get("request_id", "").startswith(("busy-", "other"))]
    assert len(order) == 203, order
    served_before = order.index("other") - order.index("busy-0")
    assert served_before < 100, f"{served_before} of the busy connection's requests were served first"
