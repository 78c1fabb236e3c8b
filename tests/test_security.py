"""Security at the edge and at rest: authentication, response headers, CORS, failing closed on
crypto trouble, the audit trail of reveals, and what user input may reach in Redis."""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time

import pytest

from conftest import API, TEST_KEYS, future, redis_url
from redis_server import free_port
from sessionsvc import create_app
from sessionsvc.config import Config, ConfigError
from sessionsvc.crypto import generate_key

API_KEY = "k-4f1c9e0b7a2d48c6a1b3e5f709d2c4b6"
OTHER_KEY = "k-second-key-for-another-client-000"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWN1cml0eSJ9.sig-Zz9q"
DOUBLED = API + API
HEADERS_ON_EVERY_RESPONSE = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def auth_app(make_app):
    return make_app(api_keys=(API_KEY, OTHER_KEY))


@pytest.fixture
def record_id(auth_app) -> str:
    response = auth_app.test_client().post(
        API, json={"user_id": "alice", "token": TOKEN, "expires_at": future()}, headers=bearer(API_KEY)
    )
    assert response.status_code == 201
    return response.json["id"]


# Every operation once, with the status it answers when authenticated.
def operations(prefix: str, record_id: str) -> list[tuple[str, str, dict | None, int]]:
    return [
        ("get", prefix, None, 200),
        ("get", f"{prefix}/{record_id}", None, 200),
        ("get", f"{prefix}/current", None, 200),
        ("get", f"{prefix}/validity", None, 200),
        ("post", prefix, {"user_id": "bob", "token": TOKEN, "expires_at": future()}, 201),
        ("put", f"{prefix}/{record_id}", {"token": TOKEN + "2", "expires_at": future()}, 200),
        ("delete", f"{prefix}/{record_id}", None, 200),
        ("delete", prefix, None, 200),
    ]


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [API, DOUBLED], ids=["canonical", "doubled-alias"])
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-key"), bearer(""), {"Authorization": f"Basic {API_KEY}"}, {"Authorization": API_KEY},
     bearer(API_KEY + "x"), bearer(API_KEY[:-1])],
    ids=["missing", "wrong", "empty", "basic-scheme", "no-scheme", "longer", "shorter"],
)
def test_every_api_operation_is_401_json_without_a_valid_key(auth_app, record_id, prefix, headers):
    client = auth_app.test_client()
    for method, path, body, _ in operations(prefix, record_id):
        response = getattr(client, method)(path, json=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.is_json and set(response.json) == {"code", "status", "message"}
        assert API_KEY not in response.get_data(as_text=True)
    assert client.get(f"{API}/{record_id}", headers=bearer(API_KEY)).json["token"] == TOKEN  # nothing changed


@pytest.mark.parametrize("prefix", [API, DOUBLED], ids=["canonical", "doubled-alias"])
@pytest.mark.parametrize("key", [API_KEY, OTHER_KEY], ids=["first-key", "second-key"])
def test_every_api_operation_answers_with_any_configured_key(auth_app, record_id, prefix, key):
    client = auth_app.test_client()
    for method, path, body, status in operations(prefix, record_id):
        response = getattr(client, method)(path, json=body, headers=bearer(key))
        assert response.status_code == status, (method, path, response.json)


def test_the_scheme_name_is_case_insensitive(auth_app, record_id):
    response = auth_app.test_client().get(API, headers={"Authorization": f"bearer {API_KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/openapi.json"])
def test_operational_paths_stay_open_when_keys_are_set(auth_app, path):
    assert auth_app.test_client().get(path).status_code == 200


def test_unknown_api_routes_are_401_not_a_map_of_the_api(auth_app):
    assert auth_app.test_client().get(f"{API}/store_001/nope").status_code == 401


def test_without_keys_the_api_is_public_as_the_contract_says(client):
    assert client.get(API).status_code == 200


def test_openapi_declares_the_bearer_scheme_when_keys_are_set(auth_app, app):
    document = auth_app.test_client().get("/openapi.json").json
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key from SESSIONSVC_API_KEYS."
    }
    assert document["security"] == [{"bearerAuth": []}]
    public = app.test_client().get("/openapi.json").json
    assert "security" not in public and "securitySchemes" not in public.get("components", {})


def test_production_refuses_to_serve_publicly_unless_told_to():
    settings = {"env": "production", "redis_url": "redis://127.0.0.1:1/0", "encryption_keys": TEST_KEYS}
    with pytest.raises(ConfigError, match="SESSIONSVC_API_KEYS"):
        create_app(Config(**settings))
    with pytest.raises(ConfigError, match="SESSIONSVC_API_KEYS"):
        create_app(Config.from_env({"SESSIONSVC_ENV": "production", "SESSIONSVC_REDIS_URL": "redis://127.0.0.1:1/0",
                                    "SESSIONSVC_ENCRYPTION_KEYS": TEST_KEYS[0], "SESSIONSVC_ALLOW_PUBLIC": "no"}))
    assert create_app(Config(**settings, allow_public=True)).test_client().get("/healthz").status_code == 200


# --- failed authentication -------------------------------------------------------------

ATTACKER = {"REMOTE_ADDR": "203.0.113.9"}
NEIGHBOUR = {"REMOTE_ADDR": "203.0.113.10"}


def assert_failures_429(response) -> None:
    assert response.status_code == 429
    assert response.json == {"code": 429, "status": "Too Many Requests", "message": (
        "Too many failed authentications from this address; retry after the seconds in Retry-After.")}
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "WWW-Authenticate" not in response.headers


def test_past_its_failed_authentication_budget_an_address_gets_429_before_any_key_check(make_app):
    client = make_app(api_keys=(API_KEY, OTHER_KEY)).test_client()
    assert [client.get(API, headers=bearer(API_KEY), environ_base=ATTACKER).status_code
            for _ in range(3)] == [200] * 3  # successes spend nothing
    guesses = [client.get(API, headers=bearer(f"guess-{n}"), environ_base=ATTACKER).status_code for n in range(30)]
    assert guesses == [401] * 30
    assert_failures_429(client.get(API, headers=bearer(API_KEY), environ_base=ATTACKER))  # even the right key
    assert_failures_429(client.post(API, json={"user_id": "u", "token": TOKEN, "expires_at": future()},
                                    headers=bearer(OTHER_KEY), environ_base=ATTACKER))
    assert_failures_429(client.get(API + API, environ_base=ATTACKER))  # the doubled alias too
    assert client.get("/healthz", environ_base=ATTACKER).status_code == 200
    # Another address is unaffected, its own failures counted apart.
    assert client.get(API, headers=bearer(API_KEY), environ_base=NEIGHBOUR).status_code == 200
    assert client.get(API, headers=bearer("guess"), environ_base=NEIGHBOUR).status_code == 401


def test_the_failure_budget_is_configurable(make_app):
    client = make_app(api_keys=(API_KEY,), auth_failures="2 per minute").test_client()
    assert [client.get(API, environ_base=ATTACKER).status_code for _ in range(3)] == [401, 401, 429]


def test_the_failure_budget_is_shared_by_app_instances_on_one_redis(real_redis, tmp_path):
    def instance():
        app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), api_keys=(API_KEY,)))
        app.instance_path = str(tmp_path)
        return app.test_client()

    first, second = instance(), instance()
    statuses = [(first if n % 2 else second).get(API, headers=bearer(f"guess-{n}"), environ_base=ATTACKER).status_code
                for n in range(30)]
    assert statuses == [401] * 30
    assert_failures_429(first.get(API, headers=bearer(API_KEY), environ_base=ATTACKER))
    assert_failures_429(second.get(API, headers=bearer(API_KEY), environ_base=ATTACKER))
    assert second.get(API, headers=bearer(API_KEY), environ_base=NEIGHBOUR).status_code == 200
    counters = [key for key in real_redis.keys("*") if b"authfail" in key]
    assert counters and all(key.startswith(b"sessionsvc:authfail:") for key in counters)
    assert not [key for key in real_redis.keys("*") if b"guess" in key]


def test_failed_authentication_is_counted_in_memory_while_redis_is_down():
    client = create_app(Config(encryption_keys=TEST_KEYS, redis_url=closed_port_url(),
                               api_keys=(API_KEY,), auth_failures="3 per minute")).test_client()
    assert client.get(API, headers=bearer(API_KEY)).status_code == 503  # answered by the store
    assert [client.get(API, headers=bearer("guess")).status_code for _ in range(3)] == [401] * 3
    assert_failures_429(client.get(API, headers=bearer(API_KEY)))


def test_without_keys_nothing_counts_failures(client, raw):
    assert [client.get(API, headers=bearer(f"guess-{n}")).status_code for n in range(40)] == [200] * 40
    assert not [key for key in raw.keys("*") if b"authfail" in key]


# --- /metrics ----------------------------------------------------------------------------

METRICS_KEY = "m-scraper-key-0123456789abcdef0123"


def test_metrics_need_an_api_key_or_a_metrics_key_when_api_keys_are_set(make_app):
    client = make_app(api_keys=(API_KEY,), metrics_keys=(METRICS_KEY,)).test_client()
    for headers in ({}, bearer("wrong"), {"Authorization": METRICS_KEY}, bearer(METRICS_KEY + "x"),
                    {"Authorization": f"Basic {API_KEY}"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sessionsvc"'
        assert response.is_json and set(response.json) == {"code", "status", "message"}
        assert b"sessionsvc_" not in response.get_data()
    for key in (API_KEY, METRICS_KEY):
        response = client.get("/metrics", headers=bearer(key))
        assert response.status_code == 200 and b"sessionsvc_store_up 1.0" in response.get_data()
    assert client.get(API, headers=bearer(METRICS_KEY)).status_code == 401  # a scraper's key opens no token


def test_failed_scrapes_spend_the_failed_authentication_budget(make_app):
    client = make_app(api_keys=(API_KEY,), auth_failures="3 per minute").test_client()
    assert [client.get("/metrics", environ_base=ATTACKER).status_code for _ in range(3)] == [401] * 3
    assert_failures_429(client.get(API, headers=bearer(API_KEY), environ_base=ATTACKER))
    assert_failures_429(client.get("/metrics", headers=bearer(API_KEY), environ_base=ATTACKER))


def test_metrics_keys_alone_guard_metrics_and_leave_the_api_public(make_app):
    client = make_app(metrics_keys=(METRICS_KEY,)).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS_KEY)).status_code == 200
    assert client.get(API).status_code == 200


def test_without_keys_metrics_stay_open(client):
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", headers=bearer("anything")).status_code == 200


@pytest.mark.parametrize(
    "settings, variable",
    [({"cors_origins": ("*",)}, "SESSIONSVC_CORS_ORIGINS"),
     ({"cors_origins": ("https://app.example.com/path",)}, "SESSIONSVC_CORS_ORIGINS"),
     ({"rate_limit": "lots"}, "SESSIONSVC_RATE_LIMIT"),
     ({"auth_failures": "lots"}, "SESSIONSVC_AUTH_FAILURES")],
)
def test_unsafe_or_malformed_edge_settings_are_refused_naming_the_variable(settings, variable):
    with pytest.raises(ConfigError, match=variable):
        Config(**settings).check()


# --- response headers --------------------------------------------------------------------


def test_security_headers_on_success_and_on_every_kind_of_error(make_app, save, client, raw, key_of):
    created = save()
    auth_client = make_app(api_keys=(API_KEY,)).test_client()
    dead_client = create_app(Config(encryption_keys=TEST_KEYS, redis_url=closed_port_url())).test_client()
    limited = make_app(rate_limit="1/minute", key_prefix="limited").test_client()
    limited.get(API)
    responses = {
        "200 list": client.get(API),
        "200 token": client.get(f"{API}/{created['id']}"),
        "201": client.post(API, json={"user_id": "u", "token": TOKEN, "expires_at": future()}),
        "400": client.post(API, data="{", content_type="application/json"),
        "401": auth_client.get(API),
        "404 id": client.get(f"{API}/store_999"),
        "404 route": client.get("/nowhere"),
        "405": client.patch(API),
        "413": client.post(API, data="x" * 70_000, content_type="application/json"),
        "415": client.post(API, data="x", content_type="text/plain"),
        "422": client.post(API, json=[]),
        "429": limited.get(API),
        "503": dead_client.get(API),
    }
    raw.hset(key_of(created["id"]), "t", b"test:" + b"\x00" * 40)
    responses["500"] = client.get(f"{API}/{created['id']}")
    for name, response in responses.items():
        assert str(response.status_code) == name.split()[0], name
        for header, value in HEADERS_ON_EVERY_RESPONSE.items():
            assert response.headers.get(header) == value, (name, header)
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", name
        assert response.headers["X-Request-ID"], name


def test_docs_page_gets_a_csp_that_lets_swagger_ui_run_but_not_be_framed(client):
    csp = client.get("/docs").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "http" not in csp


# --- CORS --------------------------------------------------------------------------------


def test_cors_answers_only_the_configured_origins(make_app):
    origins = ("https://app.example.com", "http://localhost:3000")
    client = make_app(cors_origins=origins, api_keys=(API_KEY,)).test_client()
    allowed = client.get(API, headers={"Origin": "https://app.example.com", **bearer(API_KEY)})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in allowed.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    stranger = client.get(API, headers={"Origin": "https://evil.example", **bearer(API_KEY)})
    assert "Access-Control-Allow-Origin" not in stranger.headers
    preflight = client.options(API, headers={"Origin": "https://app.example.com",
                                             "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200  # a preflight carries no key, by design
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert preflight.get_data() == b""


def test_without_an_allow_list_no_origin_is_answered(client):
    response = client.get(API, headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers


# --- failing closed ----------------------------------------------------------------------


def tamper(raw, key: str) -> None:
    blob = bytearray(raw.hget(key, "t"))
    blob[-3] ^= 0x40
    raw.hset(key, "t", bytes(blob))


@pytest.mark.parametrize("damage", ["tampered", "swapped", "key-removed"])
def test_a_record_that_does_not_decrypt_is_a_generic_500_logged_by_ids_only(make_app, raw, key_of, caplog, damage):
    writer = make_app()
    client = writer.test_client()
    first, second = (client.post(API, json={"user_id": "alice", "token": f"{TOKEN}-{index}", "expires_at": future()})
                     for index in range(2))
    assert first.status_code == second.status_code == 201
    first, second = first.json["id"], second.json["id"]
    blob = raw.hget(key_of(second), "t")
    if damage == "tampered":
        tamper(raw, key_of(second))
    elif damage == "swapped":
        raw.hset(key_of(second), "t", raw.hget(key_of(first), "t"))
    else:
        client = make_app(encryption_keys=(generate_key("fresh"),)).test_client()
    key_secret = TEST_KEYS[0].partition(":")[2]
    caplog.set_level(logging.DEBUG)
    for path in (f"{API}/{second}", f"{API}/current"):  # the second record is also the current one
        response = client.get(path)
        assert response.status_code == 500
        assert response.json == {"code": 500, "status": "Internal Server Error",
                                 "message": "The stored token could not be read."}
        body = response.get_data()
        assert TOKEN.encode() not in body and blob[5:].hex().encode() not in body and b"test" not in body
    failures = [record for record in caplog.records if record.getMessage() == "stored token failed to decrypt"]
    assert len(failures) == 2
    assert {(record.record_id, record.key_id) for record in failures} == {(second, "test")}
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert TOKEN not in logged and key_secret not in logged and repr(blob[5:]) not in logged
    assert client.get(API).status_code == 200  # listing never opens a token


# --- audit trail of reveals --------------------------------------------------------------


def audit_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "sessionsvc.audit"]


def test_each_reveal_is_audited_with_ids_and_a_fingerprint_never_the_token(auth_app, record_id, caplog):
    caplog.set_level(logging.INFO, logger="sessionsvc.audit")
    client = auth_app.test_client()
    by_id = client.get(f"{API}/{record_id}", headers={**bearer(API_KEY), "X-Request-ID": "req-by-id"})
    current = client.get(f"{API}/current", headers={**bearer(OTHER_KEY), "X-Request-ID": "req-current"})
    client.get(API, headers=bearer(API_KEY))  # listing reveals nothing
    client.get(f"{API}/validity", headers=bearer(API_KEY))
    assert by_id.status_code == current.status_code == 200
    lines = audit_lines(caplog)
    assert [line.via for line in lines] == ["id", "current"]
    fingerprint = auth_app.extensions["sessionsvc"].cipher.fingerprint(TOKEN)
    for line, request_id, count in zip(lines, ["req-by-id", "req-current"], [1, 2], strict=True):
        assert line.event == "token_revealed"
        assert line.request_id == request_id
        assert (line.record_id, line.user_id, line.fingerprint, line.reveal_count) == (
            record_id, "alice", fingerprint, count)
        assert len(line.client_key_id) == 32 and line.client_key_id not in (API_KEY, OTHER_KEY)
    assert lines[0].client_key_id != lines[1].client_key_id  # two keys, two clients
    assert TOKEN not in "\n".join(str(line.__dict__) for line in lines)
    assert fingerprint not in TOKEN and len(fingerprint) == 16


def client_id_of(app, key: str, caplog) -> str:
    """The client id the audit line of one reveal with `key` names."""
    client = app.test_client()
    created = client.post(API, json={"user_id": "alice", "token": TOKEN, "expires_at": future()}, headers=bearer(key))
    caplog.clear()
    assert client.get(f"{API}/{created.json['id']}", headers=bearer(key)).status_code == 200
    return audit_lines(caplog)[-1].client_key_id


def test_client_ids_are_keyed_with_a_server_secret_that_hosts_of_one_configuration_share(make_app, caplog):
    caplog.set_level(logging.INFO, logger="sessionsvc.audit")
    keys = (API_KEY, OTHER_KEY)
    derived = client_id_of(make_app(api_keys=keys), API_KEY, caplog)
    assert len(derived) == 32 and int(derived, 16) >= 0
    unkeyed = hmac.new(b"sessionsvc client", API_KEY.encode(), "sha256").hexdigest()
    assert derived[:8] != unkeyed[:8] and derived != unkeyed[:32]
    assert client_id_of(make_app(api_keys=keys), API_KEY, caplog) == derived  # another host, same settings
    assert client_id_of(make_app(api_keys=tuple(reversed(keys))), API_KEY, caplog) == derived
    secret = "s-client-id-secret-0123456789abcdef"
    chosen = client_id_of(make_app(api_keys=keys, client_id_secret=secret), API_KEY, caplog)
    assert len(chosen) == 32 and chosen != derived
    assert client_id_of(make_app(api_keys=keys, client_id_secret=secret), API_KEY, caplog) == chosen
    assert client_id_of(make_app(api_keys=keys, client_id_secret=secret + "2"), API_KEY, caplog) != chosen
    assert client_id_of(make_app(api_keys=(API_KEY,)), API_KEY, caplog) != derived  # another key set


def test_reveals_are_counted_exactly_under_concurrency(real_redis, tmp_path):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis)))
    app.instance_path = str(tmp_path)
    seed = app.test_client()
    record_id = seed.post(API, json={"user_id": "alice", "token": TOKEN, "expires_at": future()}).json["id"]
    threads, per_thread, statuses = 8, 25, []
    lock = threading.Lock()

    def reveal(index: int) -> None:
        client = app.test_client()
        path = f"{API}/{record_id}" if index % 2 else f"{API}/current"
        codes = [client.get(path).status_code for _ in range(per_thread)]
        with lock:
            statuses.extend(codes)

    workers = [threading.Thread(target=reveal, args=(index,)) for index in range(threads)]
    started = int(time.time())
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert statuses == [200] * threads * per_thread
    stored = real_redis.hmget("{sessionsvc}:r:1", "rc", "rl")
    assert int(stored[0]) == threads * per_thread
    assert started <= int(stored[1]) <= int(time.time())
    seed.get(API)
    seed.get(f"{API}/validity")
    assert int(real_redis.hget("{sessionsvc}:r:1", "rc")) == threads * per_thread  # only reveals count


def test_reveal_counters_stay_out_of_the_contract_responses(client, save):
    created = save()
    detail = client.get(f"{API}/{created['id']}").json
    assert "reveal_count" not in detail and "last_revealed_at" not in detail


# --- what user input may reach ----------------------------------------------------------


def test_ids_that_are_not_store_digits_are_404_without_asking_redis():
    client = create_app(Config(encryption_keys=TEST_KEYS, redis_url=closed_port_url())).test_client()
    for bad_id in ("nope", "store_abc", "store_0001", "store_1", "*", "store_*", "..%2f"):
        for method in ("get", "delete"):
            assert getattr(client, method)(f"{API}/{bad_id}").status_code == 404, (method, bad_id)
        response = client.put(f"{API}/{bad_id}", json={"token": TOKEN, "expires_at": future()})
        assert response.status_code == 404, bad_id
    assert client.get(f"{API}/store_001").status_code == 503  # a canonical id does go to Redis


@pytest.mark.parametrize("value", ["a\r\nb", "a\x00b", "caf\u00e9", "a b"])
def test_bad_characters_in_a_user_id_query_are_422(client, value):
    for path in (API, f"{API}/current", f"{API}/validity"):
        response = client.get(path, query_string={"user_id": value})
        assert response.status_code == 422 and "user_id" in response.json["errors"]["query"]
    assert client.delete(API, query_string={"user_id": value}).status_code == 422


def monitor(real_redis) -> tuple[socket.socket, list[bytes]]:
    kwargs = real_redis.connection_pool.connection_kwargs
    sock = socket.create_connection((kwargs["host"], kwargs["port"]))
    sock.sendall(b"MONITOR\r\n")
    assert sock.recv(64).startswith(b"+OK")
    return sock, []


def test_user_input_never_reaches_a_redis_pattern_command(real_redis, tmp_path):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis)))
    app.instance_path = str(tmp_path)
    client = app.test_client()
    sock, _ = monitor(real_redis)
    pattern_user = "u*[a-z]?\\x"
    created = client.post(API, json={"user_id": pattern_user, "token": TOKEN, "expires_at": future()}).json
    client.put(f"{API}/{created['id']}", json={"token": TOKEN, "expires_at": future()})
    for path in (API, f"{API}/current", f"{API}/validity"):
        assert client.get(path, query_string={"user_id": pattern_user}).status_code == 200
    client.get(f"{API}/{created['id']}")
    client.delete(API, query_string={"user_id": pattern_user})
    client.delete(API)
    real_redis.ping()
    sock.settimeout(0.5)
    seen = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
    except TimeoutError:
        pass
    sock.close()
    commands = {line.split(b'] "', 1)[1].split(b'"', 1)[0].upper() for line in seen.split(b"\r\n") if b'] "' in line}
    assert b"EVALSHA" in commands or b"EVAL" in commands
    assert not commands & {b"KEYS", b"SCAN", b"SSCAN", b"HSCAN", b"ZSCAN", b"PSUBSCRIBE", b"PUBSUB"}


def test_unknown_field_names_are_echoed_only_when_they_look_like_field_names(client):
    body = {"user_id": "u", "token": TOKEN, "expires_at": future(), "is_admin": True, TOKEN: 1, "X" * 30: 2}
    response = client.post(API, json=body)
    assert response.status_code == 422
    errors = response.json["errors"]["json"]
    assert errors["is_admin"] == ["Unknown field."]
    assert errors["_unknown"] == ["2 unknown field(s); their names are not shown."]
    assert TOKEN not in response.get_data(as_text=True)
    null_body = client.post(API, data="null", content_type="application/json")
    assert null_body.json["errors"]["json"] == {"_schema": ["Invalid input type."]}


# --- key rotation ------------------------------------------------------------------------


def test_rotation_leaves_a_record_it_cannot_decrypt_untouched_and_says_which(real_redis, tmp_path):
    old_app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis)))
    old_app.instance_path = str(tmp_path)
    writer = old_app.test_client()
    for index in range(3):
        writer.post(API, json={"user_id": f"u{index}", "token": f"{TOKEN}{index}", "expires_at": future()})
    tamper(real_redis, "{sessionsvc}:r:2")
    damaged = real_redis.hget("{sessionsvc}:r:2", "t")
    new_key = generate_key("new")
    app = create_app(Config(encryption_keys=(new_key, TEST_KEYS[0]), redis_url=redis_url(real_redis)))
    result = app.test_cli_runner().invoke(args=["rotate-keys"])
    assert result.exit_code != 0
    assert "new: 0 records before, 2 after" in result.output
    assert "test: 3 records before, 1 after" in result.output
    assert "re-encrypted 2 records" in result.output
    assert "store_002" in result.output
    for secret in (new_key.partition(":")[2], TEST_KEYS[0].partition(":")[2], TOKEN):
        assert secret not in result.output
    assert real_redis.hget("{sessionsvc}:r:2", "t") == damaged
    assert [real_redis.hget(f"{{sessionsvc}}:r:{n}", "t")[:4] for n in (1, 3)] == [b"new:", b"new:"]
