"""The least-privilege Redis user of deploy/redis-users.acl (SECURITY.md): the whole API,
its rate limits and the operator commands work under it, and it can do nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from conftest import API, TEST_KEYS, future
from journeys import exercise_every_endpoint
from sessionsvc import create_app
from sessionsvc.config import Config

ACL_FILE = Path(__file__).resolve().parent.parent / "deploy" / "redis-users.acl"
PASSWORD = "acl-test-password-0123456789abcdef"
API_KEY = "acl-test-api-key-0123456789abcdefghijkl"


def documented_rules() -> list[str]:
    """The rules of the `sessionsvc` user as the file gives them, less its placeholder password."""
    line = next(line for line in ACL_FILE.read_text().splitlines() if line.startswith("user sessionsvc "))
    return [rule for rule in line.split()[2:] if not rule.startswith(">")]


@pytest.fixture
def acl_url(real_redis):
    real_redis.execute_command("ACL", "SETUSER", "sessionsvc", "reset", *documented_rules(), f">{PASSWORD}")
    real_redis.acl_log_reset()  # the server is the tests' own: this test's refusals only
    kwargs = real_redis.connection_pool.connection_kwargs
    yield f"redis://sessionsvc:{PASSWORD}@{kwargs['host']}:{kwargs['port']}/0"
    real_redis.execute_command("ACL", "DELUSER", "sessionsvc")


@pytest.fixture
def acl_app(acl_url, tmp_path):
    app = create_app(Config(
        encryption_keys=TEST_KEYS, redis_url=acl_url, api_keys=(API_KEY,), rate_limit="1000 per minute",
    ))
    app.instance_path = str(tmp_path)
    return app


def test_every_endpoint_works_as_the_least_privilege_redis_user(acl_app, real_redis):
    client = acl_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
    exercise_every_endpoint(client)
    assert client.get(API, query_string={"page": 3, "limit": 5, "user_id": "alice"}).status_code == 200
    assert client.delete(API, query_string={"user_id": "bob"}).status_code == 200
    # A save after a clear also frees what the clear left behind.
    assert client.post(API, json={"user_id": "carol", "token": "t" * 40, "expires_at": future()}).status_code == 201
    assert client.get(API, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert b"sessionsvc_store_up 1.0" in client.get("/metrics").data
    # Nothing was refused on the way, not even where the service would swallow the error
    # (but redis-py's CLIENT SETINFO at connect, which it ignores when refused).
    refused = {entry["object"] for entry in real_redis.acl_log()} - {"client|setinfo"}
    assert refused == set()


def test_limits_events_and_expiry_sweeps_work_as_the_least_privilege_redis_user(acl_url, real_redis, tmp_path):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=acl_url, api_keys=(API_KEY,), max_tokens_per_user=2,
                            events_stream_seconds=1, events_heartbeat_seconds=0.2))
    app.instance_path = str(tmp_path)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
    ids = [client.post(API, json={"user_id": "dan", "token": "t" * 40, "expires_at": future(seconds)}).json["id"]
           for seconds in (1, 3600, 3600)]  # the third evicts the first
    assert client.delete(API, query_string={"user_id": "dan", "keep": ids[2]}).json["count"] == 1
    sweeper = app.extensions["sessionsvc.sweeper"]
    assert sweeper.sweep() is not None  # the lease taken (or renewed) and due expiries told
    sweeper.stop()
    page = client.get(f"{API}/events", query_string={"user_id": "dan", "type": "evicted"}).json
    assert [event["id"] for event in page["data"]] == [ids[0]]
    assert client.get(f"{API}/events", query_string={"after": "0-0"}).status_code == 200
    streamed = client.get(f"{API}/events", headers={"Accept": "text/event-stream"}, buffered=False)
    assert b"event: cleared" in b"".join(streamed.response)
    refused = {entry["object"] for entry in real_redis.acl_log()} - {"client|setinfo"}
    assert refused == set()


def test_operator_commands_work_as_the_least_privilege_redis_user(acl_app):
    client = acl_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_KEY}"
    for user in ("alice", "bob"):
        assert client.post(API, json={"user_id": user, "token": "t" * 40, "expires_at": future()}).status_code == 201
    runner = acl_app.test_cli_runner()
    for command in (["check-index"], ["check-index", "--repair"], ["stats"], ["rotate-keys"], ["purge-user", "bob"]):
        result = runner.invoke(args=command)
        assert result.exit_code == 0, (command, result.output)


def test_the_least_privilege_user_can_do_nothing_beyond_the_store(acl_url, real_redis):
    real_redis.set("another-apps-key", "x")
    user = redis.Redis.from_url(acl_url)
    for refused in (
        lambda: user.get("another-apps-key"),
        lambda: user.set("{sessionsvc}:x", "y"),  # SET is not among the service's commands
        lambda: user.flushall(),
        lambda: user.keys("*"),
        lambda: user.config_get("*"),
        lambda: user.eval("return redis.call('GET', KEYS[1])", 1, "another-apps-key"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    assert real_redis.get("another-apps-key") == b"x"
