"""Log hygiene: a canary token is stored, every endpoint is driven through successes and
failures (bad input, wrong keys, decrypt failures, a Redis outage), and nothing the service
wrote (log records at DEBUG with all their fields, stderr, stdout, response bodies and
headers) carries the canary, its ciphertext or any key. Only the two endpoints whose job is
to reveal a token may return it, in their 200 bodies."""

from __future__ import annotations

import json
import logging

from conftest import API, TEST_KEYS, future
from redis_server import free_port
from sessionsvc import create_app
from sessionsvc.config import Config

CANARY = "eyJhbGciOiJIUzI1NiJ9.CANARY-7f3a9c1e5b2d4f6a8c0e.sig-cAnArY"
API_KEY = "k-log-hygiene-api-key-5d1e0c9b7a3f"
REVEALING = ("GET /id 200", "GET /current 200")


def everything_logged(caplog) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        lines.append(repr(record.__dict__))
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_the_canary_token_never_leaves_except_where_it_is_asked_for(make_app, raw, key_of, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    app = make_app(api_keys=(API_KEY,), rate_limit="1000/minute", cors_origins=("https://app.example.com",))
    client = app.test_client()
    client.environ_base.update(HTTP_AUTHORIZATION=auth["Authorization"], HTTP_ORIGIN="https://app.example.com")
    responses: dict[str, object] = {}

    def call(name: str, method: str, path: str, **kwargs) -> object:
        response = getattr(client, method)(path, **kwargs)
        responses[name] = response
        return response

    body = {"user_id": "canary-user", "token": CANARY, "expires_at": future()}
    created = call("POST 201", "post", API, json=body).json
    record = f"{API}/{created['id']}"
    call("POST second 201", "post", API, json={**body, "user_id": "other"})
    call("GET list 200", "get", API)
    call("GET list user 200", "get", API, query_string={"user_id": "canary-user"})
    call("GET /id 200", "get", record)
    call("GET /current 200", "get", f"{API}/current", query_string={"user_id": "canary-user"})
    call("GET validity 200", "get", f"{API}/validity")
    call("PUT 200", "put", record, json={"token": CANARY + "-refreshed", "expires_at": future()})
    # Failures that carry the canary in the request.
    call("POST token with space 422", "post", API, json={**body, "token": CANARY + " x"})
    call("POST canary as user 422", "post", API, json={**body, "user_id": CANARY + "\n"})
    call("POST unknown field 422", "post", API, json={**body, CANARY: CANARY})
    call("POST past 422", "post", API, json={**body, "expires_at": "2000-01-01T00:00:00Z"})
    call("POST malformed 400", "post", API, data='{"token": "' + CANARY, content_type="application/json")
    call("POST not json 415", "post", API, data=CANARY, content_type="text/plain")
    call("POST oversized 413", "post", API, json={**body, "token": CANARY * 2000})
    call("PUT user change 422", "put", record, json={"user_id": "x", "token": CANARY, "expires_at": future()})
    call("PUT unknown 404", "put", f"{API}/store_999", json={"token": CANARY, "expires_at": future()})
    call("canary as id 404", "get", f"{API}/{CANARY}")
    call("canary as query 422", "get", API, query_string={"user_id": CANARY + " ", "page": CANARY})
    call("wrong method 405", "patch", record, json=body)
    call("canary as bearer 401", "get", API, headers={"Authorization": f"Bearer {CANARY}"})
    call("preflight", "options", API, headers={"Access-Control-Request-Method": "POST"})
    # Decrypt failures: the refreshed canary's ciphertext is damaged.
    blob = raw.hget(key_of(created["id"]), "t")
    raw.hset(key_of(created["id"]), "t", blob[:-1] + bytes([blob[-1] ^ 1]))
    call("GET /id tampered 500", "get", record)
    call("GET /current tampered 500", "get", f"{API}/current", query_string={"user_id": "canary-user"})
    rotate = app.test_cli_runner().invoke(args=["rotate-keys"])
    raw.hset(key_of(created["id"]), "t", blob)
    # A Redis outage, every endpoint, with the canary in hand.
    dead = create_app(Config(encryption_keys=TEST_KEYS, redis_url=dead_redis_url(), api_keys=(API_KEY,),
                             rate_limit="1000/minute")).test_client()
    for name, method, path, kwargs in [
        ("dead POST", "post", API, {"json": body}),
        ("dead PUT", "put", f"{API}/store_001", {"json": {"token": CANARY, "expires_at": future()}}),
        ("dead GET id", "get", f"{API}/store_001", {}),
        ("dead GET current", "get", f"{API}/current", {}),
        ("dead GET list", "get", API, {"query_string": {"user_id": "canary-user"}}),
        ("dead validity", "get", f"{API}/validity", {}),
        ("dead DELETE id", "delete", f"{API}/store_001", {}),
        ("dead DELETE all", "delete", API, {}),
        ("dead readyz", "get", "/readyz", {}),
    ]:
        responses[name] = getattr(dead, method)(path, headers=auth, **kwargs)
    call("DELETE id 200", "delete", record)
    call("DELETE all 200", "delete", API)

    assert responses["GET /id 200"].json["token"] == CANARY  # the canary was really in play
    assert responses["GET /id tampered 500"].status_code == 500
    assert responses["dead POST"].status_code == 503
    assert responses["canary as bearer 401"].status_code == 401
    assert any(record.name == "sessionsvc.audit" for record in caplog.records)

    secrets = [CANARY, "CANARY-7f3a9c1e5b2d4f6a8c0e", API_KEY, TEST_KEYS[0].partition(":")[2],
               blob[5:].hex(), repr(blob[5:])[2:40]]
    written = [everything_logged(caplog), capfd.readouterr().out, capfd.readouterr().err, rotate.output]
    for name, response in responses.items():
        written.append(f"{name} headers: {json.dumps(list(response.headers.items()))}")
        if name not in REVEALING:
            written.append(f"{name} body: {response.get_data(as_text=True)}")
    for text in written:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:200]}"
