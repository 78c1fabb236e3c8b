"""Request sequences shared by the topology tests."""

from __future__ import annotations

from conftest import API, JWT, future


def exercise_every_endpoint(client) -> None:
    """The eight endpoints once each, asserting their success answers."""
    created = client.post(API, json={"user_id": "alice", "token": JWT, "expires_at": future()})
    assert created.status_code == 201, created.json
    record_id = created.json["id"]
    assert client.post(API, json={"user_id": "bob", "token": JWT + "b", "expires_at": future()}).status_code == 201
    assert client.get(f"{API}/{record_id}").json["token"] == JWT
    assert client.put(f"{API}/{record_id}", json={"token": JWT + "x", "expires_at": future()}).status_code == 200
    assert client.get(f"{API}/current").json["token"] == JWT + "x"
    assert client.get(f"{API}/validity", query_string={"user_id": "bob"}).json["is_valid"] is True
    listing = client.get(API).json
    assert listing["pagination"]["total"] == 2
    assert [item["user_id"] for item in listing["data"]] == ["alice", "bob"]
    assert client.delete(f"{API}/{record_id}").json == {"deleted": True, "id": record_id}
    assert client.delete(API).status_code == 200
    assert client.get(API).json["pagination"]["total"] == 0
    assert client.get(f"{API}/current").status_code == 404
