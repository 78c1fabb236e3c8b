"""Writes racing Redis's own expiry: no operation revives a record past retention or leaves
a hash without its TTL, and the indexes always agree with the records."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import JWT
from invariants import index_problems
from sessionsvc.store import AlreadyExpired, NotFound


def redis_now(raw) -> float:
    seconds, micros = raw.time()
    return seconds + micros / 1e6


def test_store_refuses_a_save_already_dead_by_redis_clock(make_app, raw):
    """A host whose clock runs behind Redis's could validate an expiry Redis has passed."""
    vault = make_app(retention_seconds=0).extensions["sessionsvc"]
    past = int(redis_now(raw)) - 5
    with pytest.raises(AlreadyExpired):
        vault.save("alice", JWT, past)
    alive = vault.save("alice", JWT, past + 3600)
    with pytest.raises(AlreadyExpired):
        vault.refresh(alive.id, JWT, past)
    assert vault.reveal(alive.id).record.expires_at == past + 3600
    assert vault.page(1, 20)[0] == 1
    assert index_problems(raw) == []


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_refresh_racing_expiry_never_revives_a_dead_record_or_drops_its_ttl(make_app, raw):
    vault = make_app(retention_seconds=0).extensions["sessionsvc"]
    store = vault.store
    for _round in range(2):
        # Records that die (retention 0) on the next whole second of Redis's clock.
        boundary = int(redis_now(raw)) + 1
        if boundary - redis_now(raw) < 0.3:
            boundary += 1
        records = [vault.save(f"user{i % 7}", JWT, boundary) for i in range(300)]
        outcomes: dict[int, str] = {}
        time.sleep(max(0.0, boundary - redis_now(raw) - 0.05))

        def refresh_all(part: list, outcomes: dict = outcomes, boundary: int = boundary) -> None:
            for record in part:
                try:
                    outcomes[record.number] = "refreshed" if vault.refresh(record.id, JWT, boundary + 60) else "?"
                except NotFound:
                    outcomes[record.number] = "gone"

        threads = [threading.Thread(target=refresh_all, args=(records[i::3],)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for record in records:
            key = f"{store.root}:r:{record.number}"
            if outcomes[record.number] == "refreshed":
                assert raw.pexpiretime(key) == (boundary + 60) * 1000
                assert store.get(record.number).saved_at < boundary  # saved before it died, not revived
            else:
                assert raw.exists(key) == 0
        assert set(outcomes.values()) <= {"refreshed", "gone"}
        assert index_problems(raw) == []
        refreshed = sum(1 for outcome in outcomes.values() if outcome == "refreshed")
        assert vault.page(1, 100)[0] == refreshed
        vault.clear()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_creates_racing_for_new_ids_share_each_block_instead_of_fetching_one_each(make_app, raw):
    """When the block of ids runs out under concurrent creates, one of them fetches the next
    block and the others wait for it: every number of every block is used, one INCRBY per
    16 creates (it used to be one per waiting create, each using one number of its block)."""
    store = make_app().extensions["sessionsvc"].store
    counter = store.root + ":ids"
    before = int(raw.get(counter) or 0)
    numbers: list[int] = []
    start = threading.Barrier(8)

    def reserve() -> None:
        start.wait()
        numbers.extend([store.reserve_number() for _ in range(40)])

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(before + 1, before + 321))
    assert int(raw.get(counter)) == before + 320
