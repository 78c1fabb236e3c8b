"""Records live exactly as long as expires_at + retention, on Redis's own clock. Real
seconds pass here (Redis's clock cannot be moved), kept short."""

from __future__ import annotations

import time

from conftest import API, every_shard, future, iso
from invariants import check_store
from sessionsvc.store import operations as store_operations


def wait_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def test_a_record_goes_valid_then_invalid_but_refreshable_then_gone(make_app):
    client = make_app(retention_seconds=2).test_client()
    expires = int(time.time()) + 2
    body = {"user_id": "u", "expires_at": iso(expires)}
    kept = client.post(API, json={**body, "token": "kept-token-000000000000"}).json
    dropped = client.post(API, json={**body, "token": "dropped-token-00000000"}).json
    assert client.get(f"{API}/{kept['id']}").json["is_valid"] is True

    wait_until(expires + 0.3)
    assert client.get(f"{API}/{kept['id']}").json["is_valid"] is False
    listing = client.get(API).json
    assert listing["pagination"]["total"] == 2
    assert [row["is_valid"] for row in listing["data"]] == [False, False]
    assert client.get(f"{API}/validity").json == {"is_valid": False, "expires_at": iso(expires), "seconds_remaining": 0}
    assert client.get(f"{API}/current").json["is_valid"] is False

    refreshed = client.put(f"{API}/{kept['id']}", json={"token": "kept-token-refreshed-01", "expires_at": future(60)})
    assert refreshed.status_code == 200 and refreshed.json["is_valid"] is True

    wait_until(expires + 2 + 0.3)  # retention has passed for the other one
    assert client.get(f"{API}/{dropped['id']}").status_code == 404
    listing = client.get(API).json
    assert listing["pagination"]["total"] == 1
    assert [row["id"] for row in listing["data"]] == [kept["id"]]
    assert client.put(f"{API}/{dropped['id']}", json={"token": "t", "expires_at": future()}).status_code == 404
    assert client.get(f"{API}/current").json["token"] == "kept-token-refreshed-01"


def expiry_entries(raw) -> int:
    return sum(raw.zcard(key) for key in every_shard(raw, ":exp:0"))


def test_counts_stay_exact_while_a_burst_of_expiries_outruns_pruning(make_app, raw, monkeypatch):
    monkeypatch.setattr(store_operations, "PRUNE_BATCH", 1)
    client = make_app(retention_seconds=0).test_client()
    body = {"user_id": "alice", "token": "survivor-token-0000000", "expires_at": future(600)}
    survivor = client.post(API, json=body).json
    expires = int(time.time()) + 1
    for index in range(6):
        client.post(API, json={"user_id": "alice" if index % 2 else "bob", "token": f"short-lived-{index}",
                               "expires_at": iso(expires)})
    wait_until(expires + 0.3)

    listing = client.get(API).json
    assert expiry_entries(raw) > 2, "pruning should still be behind"
    assert listing["pagination"]["total"] == 1
    assert [row["id"] for row in listing["data"]] == [survivor["id"]]
    assert client.get(API, query_string={"user_id": "alice"}).json["pagination"]["total"] == 1
    assert client.get(API, query_string={"user_id": "bob"}).json == {
        "data": [], "pagination": {"page": 1, "limit": 20, "total": 0}}
    assert client.get(f"{API}/current").json["token"] == "survivor-token-0000000"
    assert client.get(API, query_string={"page": 2, "limit": 1}).json["data"] == []

    for _ in range(8):
        client.get(API)
    assert expiry_entries(raw) == 1
    check_store(raw)
