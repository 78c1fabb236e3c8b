"""Fixtures: every API test runs twice, on fakeredis (fast) and on a private
redis-server started for the test session (truth). The machine's shared Redis is never
touched; the private one is flushed between tests because the tests own it."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from hypothesis import settings as hypothesis_settings
from pytest_redis import factories

from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from sessionsvc.store import format_id, parse_id, shard_of_user
from sessionsvc.store.shards import shard_prefix

# In CI the property-based tests replay a fixed sequence of examples, so a run's verdict
# depends on the commit alone; on a developer's machine they keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if shutil.os.path.exists("/usr/bin/redis-server") else None
)
NO_REDIS_REASON = "no redis-server binary on this machine; real-Redis tier skipped (CI installs one)"

redis_proc = factories.redis_proc(executable=REDIS_SERVER or "redis-server", port=None)

TEST_KEYS = (generate_key("test"),)
API = "/api/v1/session-storage"


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def future(seconds: int = 3600) -> str:
    return iso(time.time() + seconds)


@pytest.fixture
def real_redis(request) -> Iterator[redis.Redis]:
    """A client of the session's private redis-server, flushed (it is ours) before each test."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    proc = request.getfixturevalue("redis_proc")
    client = redis.Redis(host=proc.host, port=proc.port)
    client.flushall()
    yield client
    client.close()


def redis_url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


# Every API test runs on one store in one slot (S = 1, the layout before sharding) and on
# a store sharded by user over four slots (SESSIONSVC_SHARDS=4).
SHARDED = 4


@pytest.fixture(params=["fakeredis", "redis", f"fakeredis-{SHARDED}shards", f"redis-{SHARDED}shards"])
def backend(request) -> dict:
    """How to reach the store under test: an injected fakeredis client, or a URL of the
    private redis-server (so the app builds its real client, timeouts and all); and the
    number of shards of the store (a test parametrized with plain "fakeredis" or "redis"
    runs on one)."""
    kind, _, shards = request.param.partition("-")
    shard_count = int(shards.removesuffix("shards") or 1)
    if kind == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return {"kind": "fakeredis", "client": client, "url": None, "raw": client, "shards": shard_count}
    raw = request.getfixturevalue("real_redis")
    return {"kind": "redis", "client": None, "url": redis_url(raw), "raw": raw, "shards": shard_count}


@pytest.fixture
def shards(backend) -> int:
    """The number of shards of the store under test."""
    return backend["shards"]


def nth_id(shards: int, user_id: str, nth: int) -> str:
    """The id of the `nth` record saved on a new store's shard of `user_id`: the shard's
    counter times S, plus the shard (with S = 1: store_001, store_002, ...)."""
    return format_id(nth * shards + shard_of_user(user_id, shards))


def user_root(user_id: str, shards: int = 1, prefix: str = "sessionsvc") -> str:
    """The hash tag of the shard that holds a user's records (`{sessionsvc}` with S = 1)."""
    return "{" + shard_prefix(prefix, shard_of_user(user_id, shards), shards) + "}"


def record_key(record_id: str, shards: int = 1, prefix: str = "sessionsvc") -> str:
    """The Redis key of a record's hash, in the shard its number names."""
    number = parse_id(record_id)
    return "{" + shard_prefix(prefix, number % shards, shards) + "}:r:" + str(number)


def every_shard(raw: redis.Redis, suffix: str, prefix: str = "sessionsvc") -> list[bytes]:
    """The keys named `{<prefix>...}<suffix>` in any shard of the store (a glob suffix)."""
    return sorted(raw.keys("{" + prefix + "}" + suffix) + raw.keys("{" + prefix + "/*}" + suffix))


def summed_hash(raw: redis.Redis, suffix: str) -> dict[bytes, int]:
    """A counting hash added up over every shard (``:seals``, say)."""
    totals: dict[bytes, int] = {}
    for key in every_shard(raw, suffix):
        for field, value in raw.hgetall(key).items():
            totals[field] = totals.get(field, 0) + int(value)
    return totals


@pytest.fixture
def key_of(backend):
    """The Redis key of a record (by its id) in the store under test."""
    return lambda record_id: record_key(record_id, backend["shards"])


@pytest.fixture
def real_app(real_redis, tmp_path):
    """An app on the private real redis-server only, for tests whose truth needs real Redis."""
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis)))
    app.instance_path = str(tmp_path)
    return app


@pytest.fixture
def make_app(backend, tmp_path):
    """Build an app on the test's backend with Config overrides."""

    def build(**overrides):
        settings = {"encryption_keys": TEST_KEYS, "redis_url": backend["url"], "shards": backend["shards"],
                    **overrides}
        if backend["url"] is None:
            settings.pop("redis_url")
        app = create_app(Config(**settings), redis_client=backend["client"])
        app.instance_path = str(tmp_path)
        return app

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def raw(backend) -> redis.Redis:
    """Direct access to the backend, for asserting what is stored."""
    return backend["raw"]


@pytest.fixture
def vault(app):
    return app.extensions["sessionsvc"]


@pytest.fixture
def save(client):
    """POST a token and return the response JSON (asserting 201)."""

    def do(user_id: str = "usr_9a2f31", token: str | None = None, expires_in: int = 3600, **extra):
        body = {
            "user_id": user_id,
            "token": token or "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.sig-Q3Yk",
            "expires_at": future(expires_in),
            **extra,
        }
        response = client.post(API, json=body)
        assert response.status_code == 201, response.json
        return response.json

    return do
