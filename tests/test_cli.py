"""Operator commands (`flask --app wsgi <command>`), each on the private real Redis."""

from __future__ import annotations

import pytest

from conftest import API, TEST_KEYS, future
from redis_server import free_port
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import Cipher, generate_key, parse_key

ROOT = "{sessionsvc}"


@pytest.fixture
def redis_url(real_redis) -> str:
    kwargs = real_redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


@pytest.fixture
def make_redis_app(redis_url, tmp_path):
    def build(keys: tuple[str, ...] = TEST_KEYS, url: str = redis_url):
        app = create_app(Config(encryption_keys=keys, redis_url=url))
        app.instance_path = str(tmp_path)
        return app

    return build


def saved(app, user_id: str, count: int = 1) -> list[str]:
    client = app.test_client()
    ids = []
    for index in range(count):
        body = {"user_id": user_id, "token": f"tok-{user_id}-{index}-" + "x" * 24, "expires_at": future()}
        response = client.post(API, json=body)
        assert response.status_code == 201
        ids.append(response.json["id"])
    return ids


def run(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


def test_generate_key_prints_a_key_the_cipher_accepts(make_redis_app):
    result = run(make_redis_app(), "generate-key", "--key-id", "k2026")
    assert result.exit_code == 0
    key = result.output.strip()
    assert parse_key(key)[0] == "k2026"
    Cipher([key])
    assert run(make_redis_app(), "generate-key", "--key-id", "Not Valid").exit_code != 0


def test_stats_counts_records_top_users_and_key_ids(make_redis_app):
    app = make_redis_app()
    saved(app, "usr_alice", 3)
    saved(app, "usr_bob", 1)
    result = run(app, "stats", "--top", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "records: 4" in lines
    assert "users: 2" in lines
    top = lines.index("top 1 users by records:")
    assert lines[top + 1] == "  usr_alice: 3"
    assert "usr_bob" not in result.output
    assert "  test: 4" in lines


def test_purge_user_deletes_that_users_records_only(make_redis_app):
    app = make_redis_app()
    alice = saved(app, "usr_alice", 2)
    bob = saved(app, "usr_bob", 1)
    result = run(app, "purge-user", "usr_alice")
    assert result.exit_code == 0, result.output
    assert "purged 2 records of user usr_alice" in result.output
    client = app.test_client()
    assert all(client.get(f"{API}/{record_id}").status_code == 404 for record_id in alice)
    assert client.get(f"{API}/{bob[0]}").status_code == 200
    assert client.get(API).json["pagination"]["total"] == 1


def test_rotate_keys_reencrypts_every_record_under_the_first_key(make_redis_app):
    old_key, new_key = TEST_KEYS[0], generate_key("new")
    ids = saved(make_redis_app((old_key,)), "usr_alice", 2)
    app = make_redis_app((new_key, old_key))
    result = run(app, "rotate-keys")
    assert result.exit_code == 0, result.output
    assert "test: 2 records before, 0 after" in result.output
    assert "new: 0 records before, 2 after" in result.output
    only_new = make_redis_app((new_key,)).test_client()
    assert all(only_new.get(f"{API}/{record_id}").status_code == 200 for record_id in ids)


def test_check_index_reports_a_healthy_store_as_ok(make_redis_app):
    app = make_redis_app()
    saved(app, "usr_alice", 2)
    result = run(app, "check-index")
    assert result.exit_code == 0, result.output
    assert "index OK" in result.output


def test_check_index_repair_fixes_a_deliberately_damaged_index(make_redis_app, real_redis):
    app = make_redis_app()
    first, second, third = saved(app, "usr_alice", 3)
    saved(app, "usr_bob", 1)
    real_redis.zrem(f"{ROOT}:all:0", "1")  # record 1 missing from the listing
    real_redis.persist(f"{ROOT}:r:2")  # record 2 would never expire
    real_redis.delete(f"{ROOT}:r:3")  # record 3 gone, its three index entries left behind
    real_redis.zadd(f"{ROOT}:u:0:usr_bob", {"999": 1})  # an entry for a record that never was

    result = run(app, "check-index")
    assert result.exit_code == 1
    assert "index entries without a record: 4" in result.output
    assert "records missing from an index: 1" in result.output
    assert "records without a TTL: 1" in result.output
    assert "run with --repair" in result.output

    repaired = run(app, "check-index", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "repaired 6 problems; 0 remain" in repaired.output
    assert run(app, "check-index").exit_code == 0

    client = app.test_client()
    listing = client.get(API, query_string={"user_id": "usr_alice"}).json
    assert [item["id"] for item in listing["data"]] == [second, first]
    assert client.get(API).json["pagination"]["total"] == 3
    assert 0 < real_redis.pttl(f"{ROOT}:r:2")
    assert real_redis.zcard(f"{ROOT}:u:0:usr_bob") == 1
    assert client.get(f"{API}/{third}").status_code == 404


@pytest.mark.parametrize("command", [["stats"], ["purge-user", "usr_alice"], ["check-index"], ["rotate-keys"]])
def test_commands_exit_nonzero_when_redis_is_unreachable(make_redis_app, command):
    app = make_redis_app(url=f"redis://127.0.0.1:{free_port()}/0")
    result = run(app, *command)
    assert result.exit_code == 1
    assert "Redis unavailable" in result.output
