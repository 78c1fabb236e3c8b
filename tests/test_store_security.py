"""The store trusts its indexes no further than the records they name, and no request makes
Redis walk an index.

- Reads scoped to a user (current, validity, page, clear) check each record's stored owner:
  an entry of alice's index naming bob's record (one ZADD, no keys needed) is passed over,
  logged by id, and dropped from alice's index; clear never deletes bob's record.
- Dead index entries (records past retention that pruning has not reached yet) cost a page
  at most DEAD_WINDOW ranks; beyond that a read passes over at most WALK_BUDGET entries and
  otherwise answers 503 until pruning catches up, never a wrong page.

Dead entries are planted directly (what a burst of expiries leaves behind: entries in the
three indexes with a death long past and no record hash); one test lets Redis expire
records for real. Command counts come from the real Redis's INFO commandstats.
"""

from __future__ import annotations

import itertools
import logging
import math
import time

import pytest

from conftest import API, TEST_KEYS, every_shard, iso, record_key, redis_url, user_root
from invariants import check_store
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.store import (
    DEAD_WINDOW,
    PRUNE_BATCH,
    WALK_BUDGET,
    StoreUnavailable,
    TokenStore,
    format_id,
    parse_id,
    shard_of_user,
)
from sessionsvc.store import operations as store_operations

ROOT = "{sessionsvc}"  # the store-wide keys (and, with one shard, every key)
PLANTED = 10**7  # record numbers of planted dead entries: far above any real record
FAR_PAGE = {"page": 1_000_000, "limit": 100}


def token(index: int, user: str = "") -> str:
    return f"tok-{user}-{index:06d}-0123456789abcdef"


def far_future() -> int:
    return int(time.time()) + 86400


def save_many(app, entries: list[tuple[str, str, int]]) -> list[str]:
    """Records stored through the store's own create script; ids in save order."""
    return [format_id(number) for number in app.extensions["sessionsvc"].save_many(entries)]


def plant_dead(raw, scores: list[float], users: list[str], shards: int = 1) -> None:
    """Index entries of records Redis has expired: in `all`, their user's index and `exp`
    (death long past) of the user's shard, with no record hash. `scores` place them in the
    save order."""
    start = PLANTED + sum(raw.zcard(key) for key in every_shard(raw, ":exp:0"))
    pipe = raw.pipeline(transaction=False)
    for index, score in enumerate(scores):
        number, user = start + index, users[index % len(users)]
        root = user_root(user, shards)
        pipe.zadd(f"{root}:all:0", {number: score})
        pipe.zadd(f"{root}:u:0:{user}", {number: score})
        pipe.zadd(f"{root}:exp:0", {f"{number}:{user}": 1000 + index})
    pipe.execute()


def dead_left(raw) -> int:
    return sum(raw.zcard(key) for key in every_shard(raw, ":exp:0")) - len(every_shard(raw, ":r:*"))


def top_score(raw) -> int:
    """The last save number given (by the store's counter; with shards, the store-wide one)."""
    return int(raw.get(f"{ROOT}:saves") or 0)


def plant_foreign(raw, user: str, record_id: str, score: float, shards: int = 1) -> None:
    """What an attacker with write access to Redis but no keys could do: name another user's
    record in `user`'s index."""
    raw.zadd(f"{user_root(user, shards)}:u:0:{user}", {parse_id(record_id): score})


def shard_mate(user: str, name: str, shards: int) -> str:
    """`name`, or the first `name-<n>` whose records share `user`'s shard: an index entry can
    name only a record of its own slot (one of another shard is simply not held there)."""
    candidates = itertools.chain([name], (f"{name}-{n}" for n in itertools.count(1)))
    return next(c for c in candidates if shard_of_user(c, shards) == shard_of_user(user, shards))


def listing(client, **query) -> tuple[list[str], int]:
    response = client.get(API, query_string=query)
    assert response.status_code == 200, response.json
    return [row["id"] for row in response.json["data"]], response.json["pagination"]["total"]


def commands(raw) -> dict[str, int]:
    """Calls per command so far on the real Redis (commands run by scripts included)."""
    return {name[len("cmdstat_"):]: stats["calls"] for name, stats in raw.info("commandstats").items()}


def work_of(raw, request) -> dict[str, int]:
    """The Redis commands one request made (besides the EVALSHA itself)."""
    before = commands(raw)
    request()
    after = commands(raw)
    skip = {"info", "evalsha", "eval", "script|load", "script|exists"}
    return {name: calls - before.get(name, 0) for name, calls in after.items()
            if name not in skip and calls != before.get(name, 0)}


@pytest.fixture
def make_real_app(real_redis, tmp_path):
    def build(**overrides):
        app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), **overrides))
        app.instance_path = str(tmp_path)
        return app

    return build


# --- the owner check ---------------------------------------------------------------------


def test_current_and_validity_for_a_user_pass_over_an_entry_naming_another_users_record(client, raw, save, shards):
    bob_user = shard_mate("alice", "bob", shards)
    alice = save("alice", token="alice-token-000000000000000", expires_in=600)
    bob = save(bob_user, token="bob-token-00000000000000000", expires_in=7200)
    alice_index = f"{user_root('alice', shards)}:u:0:alice"
    for path in ("current", "validity"):
        plant_foreign(raw, "alice", bob["id"], top_score(raw) + 10, shards)
        body = client.get(f"{API}/{path}", query_string={"user_id": "alice"}).json
        assert body["expires_at"] == alice["expires_at"], path
        if path == "current":
            assert body["token"] == "alice-token-000000000000000"
        assert raw.zscore(alice_index, parse_id(bob["id"])) is None, "the primary drops the foreign entry"
    current_of_bob = client.get(f"{API}/current", query_string={"user_id": bob_user}).json
    assert current_of_bob["token"] == "bob-token-00000000000000000"
    assert check_store(raw) == {"alice": {str(parse_id(alice["id"]))}, bob_user: {str(parse_id(bob["id"]))}}


def test_a_user_whose_index_names_only_another_users_record_has_no_current_token(client, raw, save, shards):
    bob = save(shard_mate("mallory", "bob", shards), token="bob-token-00000000000000000")
    for path in ("current", "validity", ""):
        plant_foreign(raw, "mallory", bob["id"], top_score(raw) + 1, shards)
        response = client.get(f"{API}/{path}".rstrip("/"), query_string={"user_id": "mallory"})
        if path == "current":
            assert response.status_code == 404
        elif path == "validity":
            assert response.json == {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
        else:
            assert response.json["data"] == [] and response.json["pagination"]["total"] == 0
    assert raw.exists(f"{user_root('mallory', shards)}:u:0:mallory") == 0


def test_a_users_listing_shows_only_their_records_with_a_consistent_total(client, raw, save, shards):
    bob_user, alice_index = shard_mate("alice", "bob", shards), f"{user_root('alice', shards)}:u:0:alice"
    alice = [save("alice", token=f"alice-token-{index}-000000000000")["id"] for index in range(3)]
    bob = [save(bob_user, token=f"bob-token-{index}-00000000000000")["id"] for index in range(2)]
    plant_foreign(raw, "alice", bob[0], top_score(raw) + 5, shards)  # above all of alice's
    plant_foreign(raw, "alice", bob[1], raw.zscore(alice_index, parse_id(alice[1])) + 0.5, shards)  # among them

    assert listing(client, user_id="alice") == (alice[::-1], 3)
    assert {int(n) for n in raw.zrange(alice_index, 0, -1)} == {parse_id(i) for i in alice}
    assert listing(client, user_id="alice", limit=2) == (alice[:0:-1], 3)
    assert listing(client, user_id="alice", limit=2, page=2) == (alice[:1], 3)
    assert listing(client, user_id=bob_user) == (bob[::-1], 2)
    assert listing(client) == ((alice + bob)[::-1], 5)
    check_store(raw)


def test_clearing_a_user_never_deletes_another_users_record_named_in_their_index(client, raw, save, shards):
    bob_user = shard_mate("alice", "bob", shards)
    alice = save("alice", token="alice-token-000000000000000")
    bob = save(bob_user, token="bob-token-00000000000000000")
    plant_foreign(raw, "alice", bob["id"], top_score(raw) + 1, shards)

    cleared = client.delete(API, query_string={"user_id": "alice"})
    assert cleared.status_code == 200 and cleared.json["count"] == 1
    assert client.get(f"{API}/{alice['id']}").status_code == 404
    assert client.get(f"{API}/{bob['id']}").json["token"] == "bob-token-00000000000000000"
    current_of_bob = client.get(f"{API}/current", query_string={"user_id": bob_user}).json
    assert current_of_bob["token"] == "bob-token-00000000000000000"
    assert listing(client) == ([bob["id"]], 1)
    assert raw.exists(f"{user_root('alice', shards)}:u:0:alice") == 0
    check_store(raw)


def test_a_skipped_entry_is_logged_by_ids_never_with_the_token(client, raw, save, shards, caplog):
    caplog.set_level(logging.DEBUG)
    save("alice", token="alice-token-000000000000000")
    secret = "bob-secret-token-never-logged-00000"
    bob = save(shard_mate("alice", "bob", shards), token=secret)
    sealed = raw.hget(record_key(bob["id"], shards), "t")
    requests = [("get", f"{API}/current"), ("get", f"{API}/validity"), ("get", API), ("delete", API)]
    for method, path in requests:
        plant_foreign(raw, "alice", bob["id"], top_score(raw) + 1, shards)
        assert getattr(client, method)(path, query_string={"user_id": "alice"}).status_code == 200

    skipped = [record for record in caplog.records if getattr(record, "event", None) == "foreign_index_entry"]
    assert len(skipped) == len(requests)
    for record in skipped:
        assert (record.name, record.levelno) == ("sessionsvc", logging.WARNING)
        assert (record.record_id, record.user_id) == (bob["id"], "alice")
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert secret not in logged and secret[:12] not in logged
    assert sealed.decode("latin-1") not in logged and repr(sealed) not in logged


def test_a_replica_read_passes_over_a_foreign_entry_and_writes_nothing(make_real_app, real_redis):
    client = make_real_app().test_client()
    body = {"expires_at": iso(far_future())}
    alice = client.post(API, json={**body, "user_id": "alice", "token": "alice-token-000000000000000"}).json
    bob = client.post(API, json={**body, "user_id": "bob", "token": "bob-token-00000000000000000"}).json
    plant_foreign(real_redis, "alice", bob["id"], top_score(real_redis) + 1)
    replica_reads = TokenStore(real_redis, replicas=real_redis)

    assert replica_reads.current("alice", reveal=True).id == alice["id"]
    assert replica_reads.current("alice").id == alice["id"]
    total, records = replica_reads.page(0, 20, "alice")
    assert (total, [record.id for record in records]) == (1, [alice["id"]])
    assert real_redis.zscore(f"{ROOT}:u:0:alice", parse_id(bob["id"])) is not None, "a replica never writes"

    assert TokenStore(real_redis).current("alice").id == alice["id"]
    assert real_redis.zscore(f"{ROOT}:u:0:alice", parse_id(bob["id"])) is None


# --- bounded reads -----------------------------------------------------------------------


def test_pages_are_exact_at_any_depth_while_dead_entries_wait_for_pruning(make_app, raw, monkeypatch):
    monkeypatch.setattr(store_operations, "PRUNE_BATCH", 1)  # the dead entries stay through every request
    app = make_app()
    client = app.test_client()
    users = ["alice", "bob", "carol"]
    ids = save_many(app, [(users[index % 3], token(index), far_future()) for index in range(90)])
    # 200 dead entries among, below and above the 90 live ones (save numbers 1..90).
    plant_dead(raw, [0.3 + 0.45 * index for index in range(190)] + [95.0 + index for index in range(10)], users)
    assert 0 < dead_left(raw) <= DEAD_WINDOW

    newest_first = ids[::-1]
    for limit in (7, 20, 100):
        for page in range(1, math.ceil(90 / limit) + 2):
            assert listing(client, page=page, limit=limit) == (newest_first[(page - 1) * limit:page * limit], 90)
    alice = [record_id for position, record_id in enumerate(ids) if position % 3 == 0][::-1]
    for page in range(1, 7):
        assert listing(client, user_id="alice", page=page, limit=6) == (alice[(page - 1) * 6:page * 6], 30)
    assert listing(client, **FAR_PAGE) == ([], 90)
    assert listing(client, user_id="bob", **FAR_PAGE) == ([], 30)
    assert client.get(f"{API}/current").json["token"] == token(89)
    assert dead_left(raw) > 150, "the dead entries should still be waiting"


def test_pages_stay_exact_while_records_redis_expired_wait_for_pruning(make_app, raw, monkeypatch):
    monkeypatch.setattr(store_operations, "PRUNE_BATCH", 1)
    app = make_app(retention_seconds=0)
    client = app.test_client()
    expires = int(time.time()) + 2
    entries = [("alice" if index % 2 else "bob", token(index), far_future() if index % 5 == 0 else expires)
               for index in range(200)]
    ids = save_many(app, entries)
    time.sleep(max(0.0, expires + 0.3 - time.time()))

    def survivors(*users: str) -> list[str]:
        return [record_id for record_id, entry in zip(ids, entries, strict=True)
                if entry[2] != expires and entry[0] in users][::-1]

    kept, kept_alice = survivors("alice", "bob"), survivors("alice")
    assert len(kept) == 40 and len(kept_alice) == 20
    for page in range(1, 8):
        assert listing(client, page=page, limit=7) == (kept[(page - 1) * 7:page * 7], 40)
    for page in range(1, 5):
        assert listing(client, user_id="alice", page=page, limit=6) == (kept_alice[(page - 1) * 6:page * 6], 20)
    assert listing(client, **FAR_PAGE) == ([], 40)
    assert listing(client, user_id="bob", **FAR_PAGE) == ([], 20)
    assert client.get(f"{API}/current", query_string={"user_id": "alice"}).json["token"] == token(195)
    assert dead_left(raw) > 100, "the expired records' entries should still be waiting"


def test_a_deep_or_far_page_reads_only_its_own_entries_however_large_the_store(make_real_app, real_redis, monkeypatch):
    monkeypatch.setattr(store_operations, "PRUNE_BATCH", 1)
    app = make_real_app()
    client = app.test_client()
    ids = save_many(app, [(f"user{index % 4}", token(index), far_future()) for index in range(3000)])
    plant_dead(real_redis, [0.5 + 15 * index for index in range(200)], ["user0", "user1", "user2", "user3"])
    newest_first = ids[::-1]

    far = work_of(real_redis, lambda: listing(client, **FAR_PAGE) == ([], 3000) or pytest.fail("far page"))
    assert far.get("hmget", 0) == 0 and far.get("zrevrange", 0) == 0, far
    assert sum(far.values()) <= DEAD_WINDOW + 16, far  # the dead entries' ranks, and a few more

    def deep_page():
        assert listing(client, page=75, limit=20) == (newest_first[1480:1500], 3000)

    deep = work_of(real_redis, deep_page)
    assert deep.get("zrevrange") == 1 and deep.get("hmget", 0) <= 20 + 8, deep
    assert sum(deep.values()) <= DEAD_WINDOW + 4 * 20 + 16, deep

    user0 = newest_first[3::4]  # index % 4 == 0, newest first

    def deep_user_page():
        assert listing(client, user_id="user0", page=30, limit=20) == (user0[580:600], 750)

    deep_user = work_of(real_redis, deep_user_page)
    assert deep_user.get("zrevrange") == 1 and deep_user.get("hmget", 0) <= 20 + 8, deep_user


def test_past_the_dead_window_a_read_answers_exactly_or_503_and_retries_converge(make_app, raw, shards):
    app = make_app()
    client = app.test_client()
    alice = save_many(app, [("alice", token(index, "alice"), far_future()) for index in range(30)])
    bob = save_many(app, [("bob", token(index, "bob"), far_future()) for index in range(10)])
    # Dead entries above every live record: enough that five requests' prunes leave more
    # than WALK_BUDGET (the walk's limit) still waiting.
    planted = 5 * PRUNE_BATCH + DEAD_WINDOW + WALK_BUDGET
    plant_dead(raw, [top_score(raw) + 1 + index for index in range(planted)], ["ghost"], shards)
    newest_first = (alice + bob)[::-1]

    assert listing(client, **FAR_PAGE) == ([], 40), "the whole-store total stays exact"
    assert listing(client, user_id="alice") == (alice[::-1][:20], 30), "a small user index is read whole"
    for path, query in ((API, {}), (f"{API}/current", {}), (API, {"user_id": "ghost"})):
        response = client.get(path, query_string=query)
        assert response.status_code == 503, (path, query, response.status_code)
        assert response.json["code"] == 503 and response.json["message"]
        assert int(response.headers["Retry-After"]) >= 1
    assert dead_left(raw) > WALK_BUDGET

    for _ in range(planted // PRUNE_BATCH):
        response = client.get(API)
        if response.status_code == 200:
            break
        assert response.status_code == 503
    assert response.status_code == 200
    assert [row["id"] for row in response.json["data"]] == newest_first[:20]
    assert response.json["pagination"]["total"] == 40
    assert client.get(f"{API}/current").json["token"] == token(9, "bob")
    assert listing(client, user_id="ghost") == ([], 0)


def test_a_read_past_the_dead_window_never_walks_the_index(make_real_app, real_redis):
    app = make_real_app()
    client = app.test_client()
    save_many(app, [(f"user{index % 2}", token(index), far_future()) for index in range(2000)])
    planted = 2 * PRUNE_BATCH + DEAD_WINDOW + 2 * WALK_BUDGET
    plant_dead(real_redis, [top_score(real_redis) + 1 + index for index in range(planted)], ["user0"])
    bound = PRUNE_BATCH * 3 + 3 * (DEAD_WINDOW + WALK_BUDGET) + 32  # the prune, and loads of at most the budget

    for path, query in ((API, {"page": 40, "limit": 20}), (f"{API}/current", {}), (API, {"user_id": "user0"})):
        responses = []
        work = work_of(real_redis, lambda path=path, query=query, into=responses: into.append(
            client.get(path, query_string=query)))
        assert responses[0].status_code == 503, (path, query, responses[0].status_code)
        assert work.get("hmget", 0) <= DEAD_WINDOW + WALK_BUDGET, (path, query, work)
        assert sum(work.values()) <= bound, (path, query, work)


def test_a_replica_that_is_catching_up_hands_the_read_to_the_primary_which_prunes(make_real_app, real_redis):
    app = make_real_app()
    save_many(app, [("alice", token(index), far_future()) for index in range(5)])
    planted = PRUNE_BATCH + DEAD_WINDOW + WALK_BUDGET + 100
    plant_dead(real_redis, [top_score(real_redis) + 1 + index for index in range(planted)], ["ghost"])
    replica_reads = TokenStore(real_redis, replicas=real_redis)

    with pytest.raises(StoreUnavailable) as caught:
        replica_reads.current()
    assert caught.value.kind == "catching_up"
    assert dead_left(real_redis) == planted - PRUNE_BATCH, "the primary pruned once"
    assert replica_reads.current().id == format_id(5)
    assert replica_reads.page(0, 20)[0] == 5
