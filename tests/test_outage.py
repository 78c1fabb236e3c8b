"""Redis unreachable: every endpoint answers 503 JSON with Retry-After, quickly."""

from __future__ import annotations

import time

import pytest

from conftest import API, TEST_KEYS, future
from redis_server import free_port
from sessionsvc import create_app
from sessionsvc.config import Config


@pytest.fixture
def dead_client():
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    return app.test_client()


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", API, None),
        ("post", API, {"user_id": "u", "token": "tok", "expires_at": None}),
        ("delete", API, None),
        ("get", f"{API}/store_001", None),
        ("put", f"{API}/store_001", {"token": "tok", "expires_at": None}),
        ("delete", f"{API}/store_001", None),
        ("get", f"{API}/current", None),
        ("get", f"{API}/validity", None),
    ],
)
def test_every_endpoint_answers_503_json_when_redis_is_down(dead_client, method, path, body):
    if body is not None:
        body = {**body, "expires_at": future()}
    started = time.monotonic()
    response = getattr(dead_client, method)(path, json=body)
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.is_json and response.json["code"] == 503 and response.json["message"]
    assert response.headers["Retry-After"].isdigit()


def test_health_stays_up_while_readiness_reports_the_outage(dead_client):
    assert dead_client.get("/healthz").status_code == 200
    ready = dead_client.get("/readyz")
    assert ready.status_code == 503 and ready.is_json
