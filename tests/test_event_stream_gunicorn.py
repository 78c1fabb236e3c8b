"""Server-Sent Events from the service as operators run it (gunicorn): events arrive as
they happen, heartbeats keep the connection, the response ends in bounded time, and
under the gevent worker open streams hold no worker hostage."""

from __future__ import annotations

import http.client
import time

import pytest

from conftest import API, JWT, future, redis_url
from servers import Gunicorn


def open_stream(port: int, **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"{API}/events", headers={"Accept": "text/event-stream", **headers})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    return response


def next_frame(response: http.client.HTTPResponse) -> str:
    """The next frame ('' when the response ends)."""
    lines = []
    while True:
        line = response.readline().decode()
        if line in ("\n", ""):
            return "".join(lines)
        lines.append(line)


def next_event(response: http.client.HTTPResponse) -> str:
    """The next frame that carries an event (passing over heartbeats and bare ids)."""
    while "event:" not in (frame := next_frame(response)):
        assert frame, "the stream ended"
    return frame


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_events_stream_live_from_gunicorn_and_the_response_ends_by_itself(real_redis, tmp_path, worker_class):
    server = Gunicorn(
        tmp_path / "gunicorn.log", workers=1, SESSIONSVC_REDIS_URL=redis_url(real_redis),
        SESSIONSVC_WORKER_CLASS=worker_class, SESSIONSVC_EVENTS_STREAM_SECONDS="4",
        SESSIONSVC_EVENTS_HEARTBEAT_SECONDS="0.5",
    ).start()
    try:
        started = time.monotonic()
        stream = open_stream(server.port)
        assert next_frame(stream).startswith("retry:")
        status, _, created = server.request("POST", API, {"user_id": "ann", "token": JWT, "expires_at": future()})
        assert status == 201
        frame = next_event(stream)
        assert "event: created" in frame and f'"id":"{created["id"]}"' in frame
        cursor = frame.split("\n")[0].removeprefix("id: ")
        rest = []
        while (frame := next_frame(stream)) != "":
            rest.append(frame)
        assert 3.5 < time.monotonic() - started < 8  # ended by itself, after the configured time
        assert any(frame.startswith(": heartbeat") for frame in rest)
        # Reconnecting with Last-Event-ID goes on from there.
        server.request("DELETE", f"{API}/{created['id']}")
        resumed = open_stream(server.port, **{"Last-Event-ID": cursor})
        assert "event: deleted" in next_event(resumed)
        resumed.close()
    finally:
        log = server.stop()
    assert "Traceback" not in log


def test_open_event_streams_hold_no_gevent_worker_hostage(real_redis, tmp_path):
    server = Gunicorn(
        tmp_path / "gunicorn.log", workers=1, SESSIONSVC_REDIS_URL=redis_url(real_redis),
        SESSIONSVC_EVENTS_STREAM_SECONDS="30",
    ).start()
    try:
        streams = [open_stream(server.port) for _ in range(20)]
        for stream in streams:
            next_frame(stream)
        started = time.monotonic()
        for _ in range(10):
            assert server.request("GET", "/healthz")[0] == 200
            assert server.request("GET", API)[0] == 200
        assert time.monotonic() - started < 3
        status, _, created = server.request("POST", API, {"user_id": "ann", "token": JWT, "expires_at": future()})
        assert status == 201
        for stream in streams:
            assert f'"id":"{created["id"]}"' in next_event(stream)
            stream.close()
    finally:
        log = server.stop()
    assert "Traceback" not in log
