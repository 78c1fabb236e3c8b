"""Configuration from the environment, start-up refusals, and the embedded store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import API, TEST_KEYS, future
from sessionsvc import create_app
from sessionsvc.config import Config, ConfigError

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
API_KEY = "k-production-test-key-0123456789abcdef"
PRODUCTION = {"env": "production", "redis_url": "redis://127.0.0.1:1/0", "encryption_keys": TEST_KEYS}


def test_settings_come_from_the_documented_variables():
    config = Config.from_env({
        "REDIS_URL": "redis://fallback:6379/0",
        "SESSIONSVC_ENV": "production",
        "SESSIONSVC_ENCRYPTION_KEYS": "a:x, b:y",
        "SESSIONSVC_API_KEYS": "k1,k2",
        "SESSIONSVC_KEY_PREFIX": "tenant-a",
        "SESSIONSVC_RETENTION_SECONDS": "0",
        "SESSIONSVC_MAX_TTL_SECONDS": "3600",
        "SESSIONSVC_REDIS_CLUSTER": "true",
        "SESSIONSVC_REDIS_SENTINELS": "h1:26379,h2:26379",
    })
    assert config.redis_url == "redis://fallback:6379/0"
    assert config.production and config.encryption_keys == ("a:x", "b:y") and config.api_keys == ("k1", "k2")
    assert config.key_prefix == "tenant-a" and config.retention_seconds == 0 and config.max_ttl_seconds == 3600
    assert config.redis_cluster is True and config.redis_sentinels == ("h1:26379", "h2:26379")
    assert Config.from_env({"SESSIONSVC_REDIS_URL": "redis://a/0", "REDIS_URL": "redis://b/0"}).redis_url == "redis://a/0"


def test_defaults_match_the_spec():
    config = Config.from_env({})
    assert config.redis_url is None and config.embedded_store
    assert config.env == "development" and config.key_prefix == "sessionsvc"
    assert config.retention_seconds == 86400 and config.max_ttl_seconds == 2592000
    assert config.redis_sentinel_service == "mymaster" and config.redis_cluster is False
    assert config.max_body_bytes == 64 * 1024


@pytest.mark.parametrize("variable, value", [("SESSIONSVC_RETENTION_SECONDS", "-1"),
                                             ("SESSIONSVC_MAX_TTL_SECONDS", "soon"),
                                             ("SESSIONSVC_REDIS_CLUSTER", "maybe")])
def test_malformed_values_are_refused_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Config.from_env({variable: value})


@pytest.mark.parametrize(
    "settings, missing",
    [
        ({"encryption_keys": TEST_KEYS, "api_keys": (API_KEY,)}, "SESSIONSVC_REDIS_URL"),
        ({"redis_url": "redis://127.0.0.1:1/0", "api_keys": (API_KEY,)}, "SESSIONSVC_ENCRYPTION_KEYS"),
        ({"redis_url": "redis://127.0.0.1:1/0", "encryption_keys": TEST_KEYS}, "SESSIONSVC_API_KEYS"),
    ],
)
def test_production_refuses_unsafe_settings_saying_which(settings, missing):
    with pytest.raises(ConfigError, match=missing):
        create_app(Config(env="production", **settings))


def test_production_starts_with_real_settings():
    app = create_app(Config(**PRODUCTION, api_keys=(API_KEY,)))
    assert app.extensions["sessionsvc"].cipher.current_key_id == "test"


@pytest.mark.parametrize(
    "weak",
    ["CHANGE-ME", "change-me", "Key1", "<key>", "x", "short-secret-Q7" + "z" * 16],
    ids=["deploy-placeholder", "placeholder-lower-case", "readme-example", "readme-bearer", "one-character",
         "31-characters"],
)
def test_production_refuses_weak_or_placeholder_api_keys_without_echoing_them(weak):
    for keys in ((weak,), (API_KEY, weak)):
        with pytest.raises(ConfigError, match="SESSIONSVC_API_KEYS") as refused:
            Config(**PRODUCTION, api_keys=keys).check()
        assert len(weak) == 1 or weak.casefold() not in str(refused.value).casefold()
        assert f"entry {len(keys)}" in str(refused.value)
    Config(api_keys=(weak,)).check()  # development takes any key


def test_the_deploy_example_is_refused_until_its_placeholders_are_replaced():
    example = dict(line.split("=", 1) for line in (DEPLOY / "sessionsvc.env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert "generate-api-key" in (DEPLOY / "sessionsvc.env").read_text()
    with pytest.raises(ConfigError, match="SESSIONSVC_API_KEYS"):
        Config.from_env(example).check()


def test_generate_api_key_prints_a_key_production_accepts():
    runner = create_app(Config(encryption_keys=TEST_KEYS)).test_cli_runner()
    keys = [runner.invoke(args=["generate-api-key"]).output.strip() for _ in range(2)]
    assert keys[0] != keys[1] and all(len(key) == 43 for key in keys)
    assert create_app(Config(**PRODUCTION, api_keys=tuple(keys))).test_client().get("/healthz").status_code == 200


def test_key_prefix_with_braces_is_refused():
    with pytest.raises(ConfigError, match="SESSIONSVC_KEY_PREFIX"):
        Config(key_prefix="{evil}").check()


def test_development_key_is_generated_once_into_the_instance_folder(tmp_path, monkeypatch, caplog):
    from sessionsvc import development_keys

    first = development_keys(str(tmp_path / "instance"))
    second = development_keys(str(tmp_path / "instance"))
    assert first == second and len(first) == 1 and first[0].startswith("dev:")
    assert oct(os.stat(tmp_path / "instance" / "dev-encryption-keys").st_mode & 0o777) == "0o600"


def test_embedded_store_serves_the_api_and_says_so(caplog):
    app = create_app(Config(encryption_keys=TEST_KEYS))
    assert "embedded in-process store" in caplog.text
    client = app.test_client()
    created = client.post(API, json={"user_id": "u", "token": "tok", "expires_at": future()})
    assert created.status_code == 201
    assert client.get(f"{API}/{created.json['id']}").json["token"] == "tok"


def test_separate_key_prefixes_are_separate_stores(real_redis, tmp_path):
    from conftest import redis_url

    url = redis_url(real_redis)
    tenant_a = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url, key_prefix="tenant-a")).test_client()
    tenant_b = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url, key_prefix="tenant-b")).test_client()
    tenant_a.post(API, json={"user_id": "u", "token": "tok", "expires_at": future()})
    assert tenant_b.get(API).json["pagination"]["total"] == 0
    tenant_b.delete(API)
    assert tenant_a.get(API).json["pagination"]["total"] == 1
    assert {key.split(b":")[0] for key in real_redis.keys("*")} == {b"{tenant-a}", b"{tenant-b}"}



def test_production_refuses_weak_or_placeholder_metrics_keys():
    for weak in ("CHANGE-ME", "scraper"):
        with pytest.raises(ConfigError, match="SESSIONSVC_METRICS_KEYS"):
            Config(**PRODUCTION, api_keys=(API_KEY,), metrics_keys=(API_KEY[::-1], weak)).check()
    Config(**PRODUCTION, api_keys=(API_KEY,), metrics_keys=(API_KEY[::-1],)).check()


def test_production_refuses_a_short_client_id_secret_without_echoing_it():
    with pytest.raises(ConfigError, match="SESSIONSVC_CLIENT_ID_SECRET") as refused:
        Config(**PRODUCTION, api_keys=(API_KEY,), client_id_secret="short-client-secret").check()
    assert "short-client-secret" not in str(refused.value)
    Config(**PRODUCTION, api_keys=(API_KEY,), client_id_secret=API_KEY[::-1]).check()


def test_trusted_proxies_come_from_gunicorns_forwarded_allow_ips():
    assert Config.from_env({}).forwarded_allow_ips == ("127.0.0.1", "::1")
    config = Config.from_env({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, 2001:db8::1"})
    assert [str(network) for network in config.trusted_proxies()] == ["10.0.0.0/8", "2001:db8::1/128"]
    assert Config(forwarded_allow_ips=("*",)).trusted_proxies() is None


@pytest.mark.parametrize("entry", ["10.0.0.300", "10.0.0.1/8", "localhost", "10.0.0.0/33"])
def test_malformed_trusted_proxies_are_refused_naming_the_variable(entry):
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        Config(forwarded_allow_ips=("127.0.0.1", entry)).check()


def test_edge_security_settings_come_from_their_variables():
    config = Config.from_env({
        "SESSIONSVC_AUTH_FAILURES": "10 per minute; 100 per hour",
        "SESSIONSVC_METRICS_KEYS": "m1, m2",
        "SESSIONSVC_CLIENT_ID_SECRET": "client-id-secret",
    })
    assert config.auth_failures == "10 per minute; 100 per hour"
    assert config.metrics_keys == ("m1", "m2") and config.client_id_secret == "client-id-secret"
    defaults = Config.from_env({})
    assert defaults.auth_failures == "30 per minute"
    assert defaults.metrics_keys == () and defaults.client_id_secret is None
    config.check()
