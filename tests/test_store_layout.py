"""How a record lies in Redis: its sealed token in chunks short enough for Redis to keep the
record hash a compact listpack at its default settings, the bytes that costs (MEMORY USAGE
on a real redis-server: deterministic for given lengths, not a timing), and records written
before tokens were chunked, which read as before and are chunked when next written."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import API, TEST_KEYS, future, redis_url
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from sessionsvc.store.scripts import TOKEN_CHUNK

# MEMORY USAGE of a record's hash beyond its sealed token: its key, the listpack's other
# fields and the chunks' headers, rounded up to the allocator's size class (measured 191 B
# at 40 characters and 263 B at 800 on Redis 7.0; a hashtable took 564 and 620).
RECORD_BEYOND_TOKEN = 300
# Its index entries (`all`, `exp`, `due`, the user's), per record, by MEMORY USAGE of each
# index over a store of 300 records (zsets of more than 128 entries: skiplists, as at scale).
# Measured 361 B. See docs/benchmarks.md, "Memory per record".
INDEX_ENTRIES = 400


def chunks(raw, key: str) -> list[bytes]:
    """A record's token fields in order: 't', 't1', 't2', ..."""
    held = raw.hgetall(key)
    return [held[b"t" if index == 0 else f"t{index}".encode()] for index in range(int(held[b"k"]))]


@pytest.mark.parametrize("token_chars", [40, 800])
def test_a_record_is_a_listpack_and_its_bytes_beyond_the_sealed_token_are_bounded(real_redis, tmp_path,
                                                                                     token_chars):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), expiry_sweep=False))
    vault = app.extensions["sessionsvc"]
    count = 300
    numbers = vault.save_many([(f"user{index % 50}", f"{index:08d}".ljust(token_chars, "x"), int(time.time()) + 3600)
                               for index in range(count)])
    root = "{sessionsvc}"
    sealed = b"".join(chunks(real_redis, f"{root}:r:{numbers[0]}"))
    assert len(sealed) == token_chars + 28 + len("test:")  # nonce and tag, key id
    for number in numbers[:20]:
        key = f"{root}:r:{number}"
        assert real_redis.object("encoding", key) == b"listpack"
        assert all(len(chunk) <= TOKEN_CHUNK for chunk in chunks(real_redis, key))
        assert real_redis.memory_usage(key, samples=0) - len(sealed) <= RECORD_BEYOND_TOKEN
    indexes = [f"{root}:all:0", f"{root}:exp:0", f"{root}:due:0",
               *(key.decode() for key in real_redis.scan_iter(match=f"{root}:u:0:*"))]
    assert real_redis.object("encoding", f"{root}:all:0") == b"skiplist"
    assert sum(real_redis.memory_usage(key, samples=0) for key in indexes) / count <= INDEX_ENTRIES


def test_a_token_of_any_length_is_chunked_and_reads_back(client, save, raw, key_of):
    for length in (1, TOKEN_CHUNK - 33, TOKEN_CHUNK - 32, 200, 8192):
        token = "".join(chr(33 + (index * 7) % 94) for index in range(length))
        created = save(token=token)
        parts = chunks(raw, key_of(created["id"]))
        assert all(1 <= len(part) <= TOKEN_CHUNK for part in parts) and len(parts[-1]) <= TOKEN_CHUNK
        assert client.get(f"{API}/{created['id']}").json["token"] == token
        assert client.get(f"{API}/current", query_string={"user_id": created["user_id"]}).json["token"] == token


def test_a_refresh_to_a_shorter_token_leaves_no_chunk_of_the_longer_one(client, save, raw, key_of):
    created = save(token="L" * 500)
    assert len(chunks(raw, key_of(created["id"]))) == 9
    response = client.put(f"{API}/{created['id']}", json={"token": "short-token", "expires_at": future()})
    assert response.status_code == 200
    held = raw.hgetall(key_of(created["id"]))
    assert int(held[b"k"]) == 1 and not any(name.startswith(b"t") and name != b"t" for name in held)
    assert client.get(f"{API}/{created['id']}").json["token"] == "short-token"


def unchunk(raw, key: str) -> None:
    """Rewrite a record as the store wrote it before tokens were chunked: all of its token
    in 't', no 'k' (a hashtable once the token is over 64 bytes)."""
    sealed = b"".join(chunks(raw, key))
    raw.hdel(key, "k", *(f"t{index}" for index in range(1, 200)))
    raw.hset(key, "t", sealed)


def test_a_record_written_before_tokens_were_chunked_reads_and_is_chunked_when_next_written(
        make_app, client, save, raw, key_of):
    token = "old-layout-" + "x" * 300
    first, second = save(user_id="alice", token=token), save(user_id="alice", token=token + "2")
    for created in (first, second):
        unchunk(raw, key_of(created["id"]))
    assert client.get(f"{API}/{first['id']}").json["token"] == token
    assert client.get(f"{API}/current", query_string={"user_id": "alice"}).json["token"] == token + "2"
    listed = client.get(API, query_string={"user_id": "alice"}).json
    assert listed["pagination"]["total"] == 2

    refreshed = client.put(f"{API}/{first['id']}", json={"token": token + "3", "expires_at": future()})
    assert refreshed.status_code == 200
    assert len(chunks(raw, key_of(first["id"]))) > 1
    assert client.get(f"{API}/{first['id']}").json["token"] == token + "3"

    # Rotating keys re-seals the other one, in chunks too.
    rotated = make_app(encryption_keys=(generate_key("new"), *TEST_KEYS))
    assert rotated.test_cli_runner().invoke(args=["rotate-keys"]).exit_code == 0
    assert chunks(raw, key_of(second["id"]))[0].startswith(b"new:")
    assert rotated.test_client().get(f"{API}/{second['id']}").json["token"] == token + "2"


# --- what a read runs when nothing is dead (commands counted, not timed) -----------------


def test_reads_with_nothing_dead_neither_prune_nor_count_and_current_reads_one_record(real_redis, tmp_path):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), expiry_sweep=False))
    vault = app.extensions["sessionsvc"]
    vault.save_many([(f"user{index % 5}", f"token-{index:04d}-" + "x" * 200, int(time.time()) + 3600)
                     for index in range(50)])
    store = vault.store
    store.load_scripts()

    def work(read) -> dict[str, int]:
        real_redis.config_resetstat()
        read()
        stats = real_redis.info("commandstats")
        return {name[len("cmdstat_"):]: value["calls"] for name, value in stats.items()
                if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat")}

    one_record = {"get": 1, "time": 1, "zrevrange": 1, "hmget": 1}
    assert work(lambda: store.current(None)) == one_record
    assert work(lambda: store.current("user3")) == one_record
    assert work(lambda: store.current("user3", reveal=True)) == {**one_record, "hset": 1}  # token prefetched
    assert work(lambda: store.get(7, reveal=True)) == {"get": 1, "time": 1, "hmget": 1, "hset": 1}
    page = work(lambda: store.page(0, 20))
    assert page == {"get": 1, "time": 1, "zcount": 1, "zcard": 1, "zrevrange": 1, "hmget": 20}



def test_a_page_asks_redis_for_the_six_fields_a_listing_needs_not_the_whole_record(real_redis):
    """Each listed record is one HMGET of user, preview, expiry, saved time, save number and
    generation (MONITOR shows the commands a script runs): never its creation time, reveal
    counters or token chunks."""
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), expiry_sweep=False))
    client = app.test_client()
    for index in range(3):
        assert client.post(API, json={"user_id": f"user{index}", "token": f"token-{index}-" + "x" * 200,
                                      "expires_at": future()}).status_code == 201
    watcher = redis.Redis.from_url(redis_url(real_redis), socket_timeout=5)
    with watcher.monitor() as monitor:
        listing = client.get(API).json
        hmgets = []
        while len(hmgets) < 3:
            command = monitor.next_command()["command"]
            if command.startswith("HMGET"):
                hmgets.append(command.split()[2:])
    assert [item["user_id"] for item in listing["data"]] == ["user2", "user1", "user0"]
    assert hmgets == [["u", "p", "e", "s", "o", "g"]] * 3
