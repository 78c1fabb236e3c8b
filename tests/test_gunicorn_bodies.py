"""Body limits through a real gunicorn (the worker classes we ship): a chunked body with no
Content-Length meets the same 413 as a declared one, answered as JSON, and the server
keeps serving afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import API, TEST_KEYS, future, redis_url
from redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["gthread", "gevent"])
def server(request, real_redis, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "SESSIONSVC_REDIS_URL": redis_url(real_redis),
        "SESSIONSVC_ENCRYPTION_KEYS": TEST_KEYS[0],
        "SESSIONSVC_WORKER_CLASS": request.param,
        "WEB_CONCURRENCY": "1",
        "SESSIONSVC_ACCESS_LOG": os.devnull,
    }
    log = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail((tmp_path / "gunicorn.log").read_text())
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=30)
    log.close()


def exchange(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, dict, bytes]:
    """Send a whole request, then read one response (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before a response"
            data += chunk
        header_block, _, body = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-response"
            body += chunk
        return int(lines[0].split()[1]), headers, body


def chunked(payload: bytes, size: int = 8192) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size]) for i in range(0, len(payload), size)]
    return [*parts, b"0\r\n\r\n"]


def post_head(extra: str) -> bytes:
    return (f"POST {API} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def document(token_length: int) -> bytes:
    return json.dumps({"user_id": "u", "token": "t" * token_length, "expires_at": future()}).encode()


def test_a_chunked_body_over_the_limit_is_a_clean_413_like_a_declared_one(server):
    status, headers, body = exchange(server, post_head("Transfer-Encoding: chunked\r\n"), chunked(document(200_000)))
    assert status == 413
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
    assert json.loads(body) == {"code": 413, "status": "Request Entity Too Large", "message": "Request body too large."}

    status, _, body = exchange(server, post_head("Transfer-Encoding: chunked\r\n"), chunked(document(100)))
    assert status == 201 and json.loads(body)["id"].startswith("store_")

    payload = document(200_000)
    status, _, body = exchange(server, post_head(f"Content-Length: {len(payload)}\r\n"), [payload])
    assert status == 413 and json.loads(body)["code"] == 413
