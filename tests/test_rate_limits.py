"""Rate limits: counted in the store's Redis (so they hold across processes and hosts), per
API key or per client address, answered 429 in the one error shape with Retry-After and
the RateLimit-* headers."""

from __future__ import annotations

import pytest

from conftest import API, TEST_KEYS, redis_url
from redis_server import free_port
from sessionsvc import create_app
from sessionsvc.config import Config

API_KEY = "k-rate-limit-test-key-0123456789ab"
OTHER_KEY = "k-rate-limit-other-key-0123456789"


def app_on(real_redis, tmp_path, **overrides):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), **overrides))
    app.instance_path = str(tmp_path)
    return app


def assert_429(response, limit: int) -> None:
    assert response.status_code == 429
    assert response.json == {
        "code": 429, "status": "Too Many Requests",
        "message": "Too many requests; retry after the number of seconds in Retry-After.",
    }
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert 0 <= int(response.headers["RateLimit-Reset"]) <= 60


def test_the_limit_holds_across_two_app_instances_sharing_redis(real_redis, tmp_path):
    first = app_on(real_redis, tmp_path, rate_limit="6/minute").test_client()
    second = app_on(real_redis, tmp_path, rate_limit="6/minute").test_client()
    remaining = []
    for index in range(6):
        response = (first if index % 2 else second).get(API)
        assert response.status_code == 200
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [5, 4, 3, 2, 1, 0]
    assert_429(first.get(API), 6)
    assert_429(second.get(f"{API}/validity"), 6)  # one budget for the whole API
    assert_429(second.get(API + API), 6)  # the doubled alias spends the same budget
    counters = [key for key in real_redis.keys("*") if b"limits" in key]
    assert counters and all(key.startswith(b"sessionsvc:limits") for key in counters)


def test_each_api_key_has_its_own_budget_and_the_key_is_never_stored(real_redis, tmp_path):
    client = app_on(real_redis, tmp_path, rate_limit="2/minute", api_keys=(API_KEY, OTHER_KEY)).test_client()
    for _ in range(2):
        assert client.get(API, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert_429(client.get(API, headers={"Authorization": f"Bearer {API_KEY}"}), 2)
    assert client.get(API, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200
    keys = b" ".join(real_redis.keys("*"))
    assert API_KEY.encode() not in keys and OTHER_KEY.encode() not in keys


def test_without_keys_each_client_address_has_its_own_budget(make_app):
    client = make_app(rate_limit="2/minute").test_client()
    here, there = {"REMOTE_ADDR": "192.0.2.10"}, {"REMOTE_ADDR": "192.0.2.20"}
    assert [client.get(API, environ_base=here).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get(API, environ_base=there).status_code == 200


def test_operational_paths_are_never_limited(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    assert client.get(API).status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        response = client.get(path)
        assert response.status_code == 200 and "RateLimit-Limit" not in response.headers
    assert client.get(API).status_code == 429


def test_off_by_default_no_counters_no_headers(client, raw):
    for _ in range(5):
        response = client.get(API)
        assert response.status_code == 200 and "RateLimit-Limit" not in response.headers
    assert not [key for key in raw.keys("*") if b"limits" in key]


def test_a_redis_outage_is_answered_by_the_store_not_the_limiter():
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                            rate_limit="100/minute"))
    client = app.test_client()
    for _ in range(2):
        response = client.get(API)
        assert response.status_code == 503 and response.json["code"] == 503


@pytest.mark.parametrize("limit", ["100/second", "1000 per minute; 50 per second", "10/hour"])
def test_documented_limit_forms_are_accepted(limit):
    Config(rate_limit=limit).check()


def test_behind_trusted_proxies_the_forwarded_address_is_the_client(make_app):
    direct = make_app(rate_limit="1/minute", key_prefix="direct").test_client()
    forged = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(2)]
    assert [direct.get(API, headers=headers).status_code for headers in forged] == [200, 429]  # not trusted

    proxied = make_app(rate_limit="1/minute", proxy_hops=1, key_prefix="proxied").test_client()
    assert [proxied.get(API, headers=headers).status_code for headers in forged] == [200, 200]
    assert proxied.get(API, headers=forged[0]).status_code == 429


def test_a_direct_client_cannot_pick_its_address_with_x_forwarded_for(make_app):
    client = make_app(rate_limit="2/minute", proxy_hops=1).test_client()
    direct = {"REMOTE_ADDR": "203.0.113.9"}  # not a trusted proxy
    rotating = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(3)]
    assert [client.get(API, headers=h, environ_base=direct).status_code for h in rotating] == [200, 200, 429]
    # The address it named has spent nothing: through the trusted proxy it has its whole budget.
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    assert [client.get(API, headers=rotating[0], environ_base=proxy).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    "peer, trusted",
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("2001:db8::1", True), ("127.0.0.1", False),
     ("11.0.0.1", False), ("2001:db8::2", False), ("", True)],
    ids=["in-network", "ipv4-mapped", "listed-address", "loopback-not-listed", "outside", "other-ipv6",
         "unix-socket"],
)
def test_forwarded_addresses_are_believed_only_from_the_configured_proxies(make_app, peer, trusted):
    app = make_app(rate_limit="1/minute", proxy_hops=1, forwarded_allow_ips=("10.0.0.0/8", "2001:db8::1"))
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    statuses = [client.get(API, headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(2)]
    assert statuses == ([200, 200] if trusted else [200, 429])


def test_every_peer_is_a_trusted_proxy_when_told_so(make_app):
    client = make_app(rate_limit="1/minute", proxy_hops=1, forwarded_allow_ips=("*",)).test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert [client.get(API, headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(2)] == [200, 200]
