"""Redis Sentinel: a master, a replica and three Sentinels started by the test. Killing the
master gives 503s (quick ones, never a 500 or a hang) until the replica is promoted, then
writes go on with no app restart; with SESSIONSVC_MIN_REPLICAS_ACK every acknowledged write
survives the failover. Reads may go to the replica, and an expired token is never valid."""

from __future__ import annotations

import threading
import time

import pytest
from redis.sentinel import SentinelManagedSSLConnection

from conftest import API, TEST_KEYS, post_token
from journeys import JWT
from redis_nodes import (
    SentinelGroup,
    need_binaries,
    nodes_stopped_afterwards,
    wait_until,
)
from sessionsvc import create_app
from sessionsvc.config import Config, ConfigError
from sessionsvc.store import connect

PASSWORD = "s3cret"


@pytest.fixture
def group(tmp_path):
    need_binaries("redis-server")
    with nodes_stopped_afterwards() as started:
        yield SentinelGroup(tmp_path, started, password=PASSWORD)


def sentinel_app(group: SentinelGroup, **overrides):
    # Host and port come from the Sentinels; the URL gives credentials and the db.
    config = Config(
        encryption_keys=TEST_KEYS,
        redis_url=f"redis://:{PASSWORD}@/2",
        redis_sentinels=group.addresses,
        **overrides,
    )
    return create_app(config)


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def posts_until_written_again(client, deadline_seconds: float = 40) -> list[tuple[int, float]]:
    """POST every 100 ms until one is stored; every answer as (status, seconds)."""
    answers = []
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        response, seconds = timed(lambda: post_token(client, "during"))
        answers.append((response.status_code, seconds))
        if response.status_code == 201:
            return answers
        assert response.headers.get("Retry-After"), response.json
        time.sleep(0.1)
    raise AssertionError(f"no write succeeded within {deadline_seconds} s: {answers[-3:]}")


def test_sentinel_client_takes_credentials_db_and_tls_from_the_url():
    primary, replicas = connect(
        "rediss://svc:pw@ignored.example:1/3?ssl_cert_reqs=none",
        sentinels=("127.0.0.1:1", "127.0.0.1:2"),
        sentinel_service="tokens",
        sentinel_password="sentinel-pw",
        read_from_replicas=True,
    )
    for client in (primary, replicas):
        pool = client.connection_pool
        assert pool.service_name == "tokens"
        assert pool.connection_class is SentinelManagedSSLConnection
        options = pool.connection_kwargs
        assert (options["username"], options["password"], options["db"]) == ("svc", "pw", 3)
        assert "host" not in options
    sentinel_options = primary.connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_options["password"] == "sentinel-pw"
    assert sentinel_options["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(
    "settings, variable",
    [
        ({"redis_url": "unix:///tmp/r.sock", "redis_sentinels": ("127.0.0.1:1",)}, "SESSIONSVC_REDIS_URL"),
        ({"redis_url": "redis://h:1", "read_from_replicas": True}, "SESSIONSVC_READ_FROM_REPLICAS"),
        ({"redis_url": "redis://h:1", "redis_cluster": True, "min_replicas_ack": 1}, "SESSIONSVC_MIN_REPLICAS_ACK"),
        ({"redis_sentinels": ("127.0.0.1:1",), "min_replicas_ack": 1, "replica_ack_timeout_ms": 1000},
         "SESSIONSVC_REPLICA_ACK_TIMEOUT_MS"),
    ],
)
def test_topology_settings_that_cannot_work_are_refused_by_name(settings, variable):
    with pytest.raises(ConfigError, match=variable):
        Config(**settings).check()


def test_killed_master_gives_quick_503s_until_the_replica_is_promoted_then_writes_resume(group):
    client = sentinel_app(group).test_client()
    before = [post_token(client, "alice").json["id"] for _ in range(5)]
    assert group.master.client(db=2).dbsize() > 0
    group.wait_in_sync()

    group.master.kill()
    answers = posts_until_written_again(client)

    statuses = [status for status, _ in answers]
    assert statuses[0] == 503 and statuses[-1] == 201
    assert set(statuses) == {503, 201}, statuses
    assert max(seconds for _, seconds in answers) < 3
    assert group.master_port() == group.replica.port
    for record_id in before:
        assert client.get(f"{API}/{record_id}").status_code == 200
    assert client.get(API).json["pagination"]["total"] == len(before) + 1
    assert client.get("/readyz").status_code == 200


def test_with_min_replicas_ack_every_acknowledged_write_survives_the_failover(group):
    client = sentinel_app(group, min_replicas_ack=1, replica_ack_timeout_ms=300).test_client()
    assert post_token(client, "alice").status_code == 201

    # A replica that does not acknowledge in time: 503, yet the write may exist on the master.
    group.replica.pause()
    try:
        unacknowledged, seconds = timed(lambda: post_token(client, "unacknowledged"))
    finally:
        group.replica.resume()
    assert unacknowledged.status_code == 503 and seconds < 3
    assert unacknowledged.headers["Retry-After"]
    group.wait_in_sync()
    assert client.get(API, query_string={"user_id": "unacknowledged"}).json["pagination"]["total"] == 1

    acknowledged: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def write_continuously() -> None:
        writer = sentinel_app(group, min_replicas_ack=1, replica_ack_timeout_ms=300).test_client()
        while not stop.is_set():
            response = post_token(writer, "writer")
            statuses.append(response.status_code)
            if response.status_code == 201:
                acknowledged.append(response.json["id"])

    writer = threading.Thread(target=write_continuously)
    writer.start()
    try:
        wait_until(lambda: len(acknowledged) >= 20, what="20 acknowledged writes")
        group.master.kill()
        acknowledged_before_kill = len(acknowledged)
        wait_until(lambda: group.master_port() == group.replica.port, timeout=30, what="the promotion")
        # The new master has no replica yet: with the setting, writes wait for one (503).
        response = post_token(client, "no-replica-yet")
        assert response.status_code == 503
        # The old master comes back as a replica of the new one (as Sentinel would make it).
        group.master.start("--replicaof", "127.0.0.1", str(group.replica.port))
        wait_until(lambda: post_token(client, "after").status_code == 201, timeout=30, what="writes to resume")
    finally:
        stop.set()
        writer.join(30)

    assert set(statuses) <= {201, 503}, set(statuses)
    assert acknowledged_before_kill >= 20
    for record_id in acknowledged:
        assert client.get(f"{API}/{record_id}").status_code == 200, record_id


def test_reads_from_the_replica_see_the_record_and_never_call_an_expired_token_valid(group):
    # Acknowledged writes make the replica current before the next read (read-your-writes).
    client = sentinel_app(group, read_from_replicas=True, min_replicas_ack=1).test_client()
    record_id = post_token(client, "alice").json["id"]
    replica_stats = group.replica.client().info("commandstats")
    assert client.get(f"{API}/{record_id}").json["token"] == JWT
    assert client.get(f"{API}/current").json["is_valid"] is True
    assert client.get(API).json["pagination"]["total"] == 1
    validity = client.get(f"{API}/validity").json
    assert validity["is_valid"] is True and validity["seconds_remaining"] > 3000

    read_only = group.replica.client().info("commandstats")
    calls = sum(read_only.get(name, {}).get("calls", 0) - replica_stats.get(name, {}).get("calls", 0)
                for name in ("cmdstat_evalsha_ro", "cmdstat_eval_ro"))
    assert calls >= 4
    master_stats = group.master.client().info("commandstats")
    assert "cmdstat_evalsha_ro" not in master_stats and "cmdstat_eval_ro" not in master_stats

    # The token's expires_at passes (the record is kept for retention): the replica, which
    # expires nothing itself, still answers invalid, computed from expires_at and Redis TIME.
    master = group.master.client(db=2)
    master.hset("{sessionsvc}:r:" + record_id.removeprefix("store_").lstrip("0"), "e", int(time.time()) - 5)
    group.wait_in_sync()
    assert client.get(f"{API}/validity").json == {
        "is_valid": False, "expires_at": client.get(f"{API}/{record_id}").json["expires_at"], "seconds_remaining": 0
    }
    assert client.get(API).json["data"][0]["is_valid"] is False
    assert client.get(f"{API}/current").json["is_valid"] is False
