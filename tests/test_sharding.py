"""One store over many slots (SESSIONSVC_SHARDS): a user's records in the shard a hash of
the user id picks, ids that name their shard, one save order across shards, whole-store
reads and clears that keep their meaning, S fixed once the store is written; on one
server here, under Sentinel and on a Redis Cluster in tests/test_sharding_topology.py.

Every API test of the suite also runs at S = 4 (tests/conftest.py); these pin what only a
sharded store has."""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis
from redis.crc import key_slot

from conftest import API, TEST_KEYS, future, post_token, record_key, redis_url, user_root
from journeys import JWT, exercise_every_endpoint
from sessionsvc import create_app
from sessionsvc.config import Config, ConfigError
from sessionsvc.store import format_id, max_global_depth, parse_id, shard_of_user
from sessionsvc.store.shards import shard_prefix

USERS = [f"user{index:02d}" for index in range(24)]


def app_on(client_or_url, shards: int, **overrides):
    """An app on an injected client (fakeredis) or a Redis URL."""
    if isinstance(client_or_url, str):
        return create_app(Config(encryption_keys=TEST_KEYS, redis_url=client_or_url, shards=shards, **overrides))
    return create_app(Config(encryption_keys=TEST_KEYS, shards=shards, **overrides), redis_client=client_or_url)


@pytest.fixture(params=["fakeredis", "redis"])
def server(request):
    """Where the sharded store lives: a fakeredis server, or the private redis-server."""
    if request.param == "fakeredis":
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return redis_url(request.getfixturevalue("real_redis"))


def raw_of(server) -> redis.Redis:
    return server if not isinstance(server, str) else redis.Redis.from_url(server)


# --- placement and ids ----------------------------------------------------------------------


def test_a_users_records_live_in_their_shard_under_a_tag_that_starts_with_the_prefix(server):
    client, raw = app_on(server, 4).test_client(), raw_of(server)
    saved = {user: [post_token(client, user).json["id"] for _ in range(3)] for user in USERS[:8]}
    for user, ids in saved.items():
        shard = shard_of_user(user, 4)
        root = "{" + shard_prefix("sessionsvc", shard, 4) + "}"
        assert root.startswith("{sessionsvc/") and root == user_root(user, 4)
        for record_id in ids:
            assert parse_id(record_id) % 4 == shard, "the number names the shard"
            assert raw.hget(f"{root}:r:{parse_id(record_id)}", "u") == user.encode()
        assert [int(n) for n in raw.zrevrange(f"{root}:u:0:{user}", 0, -1)] == [parse_id(i) for i in ids[::-1]]
    assert len({shard_of_user(user, 4) for user in saved}) > 1
    assert not raw.keys("{sessionsvc}:r:*"), "with shards no record lives under the prefix's own tag"


def test_ids_are_unique_across_shards_never_reused_and_each_shard_counts_on(server):
    client = app_on(server, 4).test_client()
    first = [post_token(client, user).json["id"] for user in USERS]
    assert client.delete(API).json["count"] == len(USERS)
    second = [post_token(client, user).json["id"] for user in USERS]
    numbers = [parse_id(record_id) for record_id in first + second]
    assert len(set(numbers)) == len(numbers)
    assert all(record_id == format_id(parse_id(record_id)) for record_id in first + second)
    for before, after in zip(first, second, strict=True):
        assert parse_id(after) > parse_id(before) and parse_id(after) % 4 == parse_id(before) % 4


def test_a_bulk_load_keeps_the_save_order_and_places_each_record_in_its_users_shard(server):
    app = app_on(server, 4)
    entries = [(USERS[index % 10], f"{JWT}.{index}", int(time.time()) + 3600) for index in range(40)]
    numbers = app.extensions["sessionsvc"].save_many(entries)
    assert [number % 4 for number in numbers] == [shard_of_user(user, 4) for user, _, _ in entries]
    listed = app.test_client().get(API, query_string={"limit": 100}).json
    assert [row["id"] for row in listed["data"]] == [format_id(number) for number in reversed(numbers)]


# --- whole-store operations -----------------------------------------------------------------


def test_the_whole_store_keeps_one_save_order_across_shards(server):
    client = app_on(server, 4).test_client()
    ids = [post_token(client, user, token=f"{JWT}.{index}").json["id"] for index, user in enumerate(USERS)]
    refreshed = client.put(f"{API}/{ids[3]}", json={"token": f"{JWT}.again", "expires_at": future()})
    assert refreshed.status_code == 200
    order = [ids[3], *[record_id for record_id in ids[::-1] if record_id != ids[3]]]
    listed = client.get(API, query_string={"limit": 100}).json
    assert [row["id"] for row in listed["data"]] == order and listed["pagination"]["total"] == len(USERS)
    for page in (1, 2, 3):
        body = client.get(API, query_string={"page": page, "limit": 7}).json
        assert [row["id"] for row in body["data"]] == order[(page - 1) * 7:page * 7]
    current = client.get(f"{API}/current").json
    assert current["token"] == f"{JWT}.again"
    assert client.get(f"{API}/validity").json["expires_at"] == current["expires_at"]
    newest = post_token(client, USERS[0], token=f"{JWT}.newest").json
    assert client.get(f"{API}/current").json["token"] == f"{JWT}.newest"
    assert client.get(API).json["data"][0]["id"] == newest["id"]
    client.delete(f"{API}/{newest['id']}")
    assert client.get(f"{API}/current").json["token"] == f"{JWT}.again"


def test_a_whole_store_current_counts_one_reveal_on_its_own_record_only(server):
    client, raw = app_on(server, 4).test_client(), raw_of(server)
    ids = [post_token(client, user).json["id"] for user in USERS[:8]]
    assert client.get(f"{API}/current").json["token"] == JWT
    reveals = {record_id: raw.hget(record_key(record_id, 4), "rc") for record_id in ids}
    assert reveals == {**dict.fromkeys(ids[:-1]), ids[-1]: b"1"}


def test_a_deep_whole_store_page_is_refused_with_a_422_naming_page_unless_past_the_end(server):
    depth = max_global_depth(4)
    assert (depth, max_global_depth(16), max_global_depth(64)) == (1000, 250, 100)  # page 1, limit 100: always
    client = app_on(server, 4).test_client()
    for user in USERS[:5]:
        post_token(client, user)
    deepest = {"page": depth // 100, "limit": 100}
    assert client.get(API, query_string=deepest).json["data"] == []  # within the depth: past the end, empty
    too_deep = {"page": depth // 100 + 1, "limit": 100}
    far = client.get(API, query_string=too_deep)
    assert far.status_code == 200 and far.json == {"data": [], "pagination": {"page": 11, "limit": 100, "total": 5}}

    app = app_on(server, 4)
    app.extensions["sessionsvc"].save_many(
        [(USERS[index % 3], f"{JWT}.{index}", int(time.time()) + 3600) for index in range(depth + 50)]
    )
    refused = app.test_client().get(API, query_string=too_deep)
    assert refused.status_code == 422
    assert str(depth) in refused.json["errors"]["query"]["page"][0]
    assert "user_id" in refused.json["errors"]["query"]["page"][0]
    one_user = app.test_client().get(API, query_string={**too_deep, "user_id": USERS[0]})
    assert one_user.status_code == 200 and one_user.json["pagination"]["total"] == (depth + 50) // 3 + 1


def test_clear_all_clears_every_shard_and_a_user_clear_only_theirs(server):
    client = app_on(server, 4).test_client()
    for user in USERS[:8]:
        post_token(client, user)
        post_token(client, user)
    assert client.delete(API, query_string={"user_id": USERS[0]}).json["count"] == 2
    assert client.get(API).json["pagination"]["total"] == 14
    assert client.delete(API).json["count"] == 14
    assert client.get(API).json["pagination"]["total"] == 0
    assert client.get(f"{API}/current").status_code == 404
    assert client.get(f"{API}/validity").json == {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
    for user in USERS[:8]:
        assert client.get(f"{API}/current", query_string={"user_id": user}).status_code == 404


def test_an_idempotency_key_reused_for_another_users_record_is_refused_whatever_their_shards(server):
    client = app_on(server, 4).test_client()
    other = next(user for user in USERS if shard_of_user(user, 4) != shard_of_user(USERS[0], 4))
    first = post_token(client, USERS[0], **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    again = post_token(client, USERS[0], **{"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again.json["id"] == first.json["id"]
    reused = post_token(client, other, **{"Idempotency-Key": "k-1"})
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json["errors"]["headers"]
    assert client.get(API).json["pagination"]["total"] == 1


# --- the number of shards is fixed -----------------------------------------------------------


def test_a_process_configured_with_another_shard_count_refuses_to_start_naming_both(server):
    post_token(app_on(server, 4).test_client(), "alice")
    with pytest.raises(ConfigError) as refused:
        app_on(server, 2)
    message = str(refused.value)
    assert "SESSIONSVC_SHARDS" in message and "with 2 shard" in message and "created with 4" in message
    assert post_token(app_on(server, 4).test_client(), "bob").status_code == 201


def test_a_store_written_before_sharding_is_a_store_of_one_shard(server):
    raw = raw_of(server)
    assert post_token(app_on(server, 1).test_client(), "alice").status_code == 201
    raw.delete("{sessionsvc}:layout")  # as a store written before the layout was recorded
    with pytest.raises(ConfigError) as refused:
        app_on(server, 4)
    assert "with 4 shard" in str(refused.value) and "created with 1" in str(refused.value)
    assert app_on(server, 1).test_client().get(API).json["pagination"]["total"] == 1
    assert raw.hget("{sessionsvc}:layout", "shards") == b"1"


def test_a_process_that_could_not_check_at_start_up_refuses_to_write_into_another_layout(real_redis, tmp_path):
    url = redis_url(real_redis)
    post_token(app_on(url, 4).test_client(), "alice")
    # Built while Redis did not answer, then Redis answers: the first write checks.
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url, shards=2),
                     redis_client=_unanswering_then(real_redis))
    app.instance_path = str(tmp_path)
    client = app.test_client()
    refused = post_token(client, "bob")
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503
    assert real_redis.hget("{sessionsvc}:layout", "shards") == b"4"


def _unanswering_then(client: redis.Redis):
    """A client whose first command fails as an unreachable Redis would, then answers."""

    class FirstCallFails(redis.Redis):
        failed = False

        def execute_command(self, *args, **options):
            if not FirstCallFails.failed:
                FirstCallFails.failed = True
                raise redis.exceptions.ConnectionError("not yet")
            return super().execute_command(*args, **options)

    kwargs = client.connection_pool.connection_kwargs
    return FirstCallFails(host=kwargs["host"], port=kwargs["port"])


def test_reshard_is_refused_with_the_reason_and_changes_nothing(server):
    app = app_on(server, 4)
    post_token(app.test_client(), "alice")
    result = app.test_cli_runner().invoke(args=["reshard", "--to", "8"])
    assert result.exit_code != 0
    assert "not supported" in result.output and "nothing was changed" in result.output and "4 to 8" in result.output
    assert raw_of(server).hget("{sessionsvc}:layout", "shards") == b"4"
    assert app.test_client().get(API).json["pagination"]["total"] == 1


@pytest.mark.parametrize("shards", [2, 4, 16, 64, 256])
def test_each_shards_tag_hashes_into_its_own_share_of_the_cluster_slots(shards):
    for shard in range(shards):
        tag = shard_prefix("sessionsvc", shard, shards)
        assert tag.startswith(f"sessionsvc/{shard}")
        slot = key_slot(tag.encode())
        assert shard * 16384 // shards <= slot < (shard + 1) * 16384 // shards


@pytest.mark.parametrize("value", ["0", "-1", "257", "four"])
def test_a_shard_count_out_of_range_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"SESSIONSVC_SHARDS": value}).check()
    assert "SESSIONSVC_SHARDS" in str(refused.value)


def test_operator_commands_cover_every_shard(server):
    app = app_on(server, 4)
    client = app.test_client()
    for user in USERS[:6]:
        post_token(client, user)
    runner = app.test_cli_runner()
    stats = runner.invoke(args=["stats"])
    assert stats.exit_code == 0 and "records: 6" in stats.output and "users: 6" in stats.output
    assert runner.invoke(args=["check-index"]).exit_code == 0
    assert runner.invoke(args=["purge-user", USERS[0]]).exit_code == 0
    assert client.get(API).json["pagination"]["total"] == 5
    body = client.get("/metrics").get_data(as_text=True)
    assert "sessionsvc_records 5.0" in body


# --- least privilege, Sentinel --------------------------------------------------------------


def test_every_endpoint_works_as_the_least_privilege_redis_user_with_shards(real_redis, tmp_path):
    from test_redis_acl import PASSWORD, documented_rules

    real_redis.execute_command("ACL", "SETUSER", "sessionsvc", "reset", *documented_rules(), f">{PASSWORD}")
    real_redis.acl_log_reset()
    kwargs = real_redis.connection_pool.connection_kwargs
    try:
        app = app_on(f"redis://sessionsvc:{PASSWORD}@{kwargs['host']}:{kwargs['port']}/0", 4)
        app.instance_path = str(tmp_path)
        client = app.test_client()
        exercise_every_endpoint(client)
        assert post_token(client, "carol", **{"Idempotency-Key": "k"}).status_code == 201
        assert client.get("/readyz").status_code == 200 and client.get("/metrics").status_code == 200
        for command in (["check-index"], ["stats"], ["rotate-keys"], ["purge-user", "carol"]):
            assert app.test_cli_runner().invoke(args=command).exit_code == 0, command
        assert {entry["object"] for entry in real_redis.acl_log()} - {"client|setinfo"} == set()
    finally:
        real_redis.execute_command("ACL", "DELUSER", "sessionsvc")
