"""Input rules through a real gunicorn (the worker classes we ship): a chunked body with no
Content-Length meets the same 413 as a declared one, answered as JSON, and the server
keeps serving afterwards (the rules in process: test_input_rules.py)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import API, future, redis_url
from servers import Gunicorn, raw_exchange


@pytest.fixture(params=["gthread", "gevent"])
def server(request, real_redis, tmp_path):
    instance = Gunicorn(tmp_path / "gunicorn.log", SESSIONSVC_REDIS_URL=redis_url(real_redis),
                        SESSIONSVC_WORKER_CLASS=request.param, SESSIONSVC_ACCESS_LOG=os.devnull).start()
    yield instance.port
    instance.stop()


def chunked(payload: bytes, size: int = 8192) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size]) for i in range(0, len(payload), size)]
    return [*parts, b"0\r\n\r\n"]


def post_head(extra: str) -> bytes:
    return (f"POST {API} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def document(token_length: int) -> bytes:
    return json.dumps({"user_id": "u", "token": "t" * token_length, "expires_at": future()}).encode()


CHUNKED_POST = post_head("Transfer-Encoding: chunked\r\n")


def test_a_chunked_body_over_the_limit_is_a_clean_413_like_a_declared_one(server):
    status, headers, body = raw_exchange(server, CHUNKED_POST, *chunked(document(200_000)))
    assert status == 413
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
    assert json.loads(body) == {"code": 413, "status": "Request Entity Too Large", "message": "Request body too large."}

    status, _, body = raw_exchange(server, CHUNKED_POST, *chunked(document(100)))
    assert status == 201 and json.loads(body)["id"].startswith("store_")

    payload = document(200_000)
    status, _, body = raw_exchange(server, post_head(f"Content-Length: {len(payload)}\r\n"), payload)
    assert status == 413 and json.loads(body)["code"] == 413
