"""Fixtures: every API test runs twice, on fakeredis (fast) and on a private
redis-server started for the test session (truth). The machine's shared Redis is never
touched; the private one is flushed between tests because the tests own it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from hypothesis import settings as hypothesis_settings
from pytest_redis import factories

from redis_server import REDIS_SERVER
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from sessionsvc.store import format_id, parse_id, shard_of_user
from sessionsvc.store.shards import shard_prefix
from sessionsvc.sweeper import ExpirySweeper

# In CI the property-based tests replay a fixed sequence of examples, so a run's verdict
# depends on the commit alone; on a developer's machine they keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

NO_REDIS_REASON = "no redis-server binary on this machine; real-Redis tier skipped (CI installs one)"

# The session's private redis-server, by pytest-redis on a free port, with the binary every
# other private redis-server uses (tests/redis_server.py says why two ways remain).
redis_proc = factories.redis_proc(executable=REDIS_SERVER or "redis-server", port=None)

TEST_KEYS = (generate_key("test"),)
# The token most tests store: JWT-shaped, 59 characters (its preview shows 8 + 4 of them).
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.sig-Q3Yk"
API = "/api/v1/session-storage"


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def future(seconds: int = 3600) -> str:
    return iso(time.time() + seconds)


def post_token(client, user_id: str = "ann", token: str = JWT, expires_in: int = 3600, **headers):
    """POST a token for `user_id`, expiring in `expires_in` seconds; the response, unchecked."""
    return client.post(API, json={"user_id": user_id, "token": token, "expires_at": future(expires_in)},
                       headers=headers)


def saved_id(client, user_id: str = "ann", token: str = JWT, expires_in: int = 3600, **headers) -> str:
    """`post_token`, asserting the 201; the new record's id."""
    response = post_token(client, user_id, token, expires_in, **headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


@pytest.fixture(autouse=True)
def sweepers_stop_with_their_test(monkeypatch) -> Iterator[list[ExpirySweeper]]:
    """Every expiry sweeper an app starts during a test stops when the test ends, so that
    none sweeps (or holds the lease) in a later test's Redis."""
    started: list[ExpirySweeper] = []
    start = ExpirySweeper.start

    def start_and_remember(sweeper: ExpirySweeper) -> None:
        started.append(sweeper)
        start(sweeper)

    monkeypatch.setattr(ExpirySweeper, "start", start_and_remember)
    yield started
    for sweeper in started:
        sweeper.stop(release=False)


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
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), expiry_sweep=False))
    app.instance_path = str(tmp_path)
    return app


@pytest.fixture
def make_app(backend, tmp_path):
    """Build an app on the test's backend with Config overrides. No expiry sweeper runs in
    the background unless a test asks for one (`expiry_sweep=True`): tests that count
    Redis commands or keys must not see its ticks, and sweeps can be driven directly."""

    def build(**overrides):
        settings = {"encryption_keys": TEST_KEYS, "redis_url": backend["url"], "expiry_sweep": False,
                    "shards": backend["shards"], **overrides}
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
            "token": token or JWT,
            "expires_at": future(expires_in),
            **extra,
        }
        response = client.post(API, json=body)
        assert response.status_code == 201, response.json
        return response.json

    return do


# --- markers ----------------------------------------------------------------------------
# One table: which areas are slow to run and why, so a developer can run the fast core
# (`pytest -m "not browser and not topology and not faults and not slow"`, see
# tests/README.md) while `make test` runs everything. An entry is a module, or one test of
# a module (`module::test_name`, every parametrization of it) that waits real seconds in an
# otherwise quick module.
MARKED = {
    "browser": {"test_docs_browser"},  # headless Chromium
    # clusters, Sentinels, many instances
    "topology": {"test_cluster", "test_sentinel", "test_scale_out", "test_sharding_topology"},
    "faults": {  # killed servers, real seconds of expiry
        "test_faults", "test_outage", "test_store_races", "test_expiry",
        "test_lifecycle::test_records_past_expiry_count_until_retention_ends_and_then_no_longer",
        "test_store_security::test_pages_stay_exact_while_records_redis_expired_wait_for_pruning",
    },
    "slow": {  # real gunicorns, fuzzing, property-based runs, benchmark smoke runs, streams held open
        "test_schemathesis", "test_model", "test_bench", "test_ops_gunicorn", "test_workers",
        "test_input_rules_gunicorn", "test_deploy", "test_turns", "test_consistency", "test_cli",
        "test_event_stream_gunicorn", "test_sweeper", "test_bench_sharding",
        "test_events::test_event_stream_sends_held_events_then_new_ones_with_heartbeats_and_ends_in_bounded_time",
        "test_lifecycle_sharded::test_the_sweeper_tells_each_expiry_once_on_every_shard",
        "test_lifecycle_sharded::test_the_whole_feed_streams_as_server_sent_events_and_resumes_after_last_event_id",
    },
}


def pytest_configure(config) -> None:
    for marker, entries in MARKED.items():
        config.addinivalue_line("markers", f"{marker}: {', '.join(sorted(entries))}")


# Modules whose tests read the store's one event stream in Redis directly (`events_check`):
# they run on one store; tests/test_lifecycle_sharded.py covers the lifecycle, and the
# whole store's merged feed, with shards.
SINGLE_STORE_MODULES = {"test_events", "test_lifecycle", "test_sweeper", "test_event_stream_gunicorn"}


def pytest_collection_modifyitems(config, items) -> None:
    sharded = [item for item in items if item.module.__name__.rpartition(".")[2] in SINGLE_STORE_MODULES
               and str(getattr(item, "callspec", None) and item.callspec.params.get("backend", "")).endswith("shards")]
    if sharded:
        config.hook.pytest_deselected(items=sharded)
        items[:] = [item for item in items if item not in sharded]
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        names = {module, f"{module}::{item.originalname}"}
        for marker, entries in MARKED.items():
            if not names.isdisjoint(entries):
                item.add_marker(marker)
