"""The session lifecycle on a sharded store (SESSIONSVC_SHARDS = 4): the per-user limit,
clear with keep and the expiry sweeper work shard by shard; events are read one user at a
time, in that user's exact order, and the whole-store feed is refused naming user_id."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import API, JWT, future
from sessionsvc.store import parse_id, shard_of_user
from sessionsvc.sweeper import ExpirySweeper

pytestmark = pytest.mark.parametrize("backend", ["fakeredis-4shards", "redis-4shards"], indirect=True)
EVENTS = f"{API}/events"


def post(client, user_id: str, token: str = JWT, expires_in: int = 3600):
    return client.post(API, json={"user_id": user_id, "token": token, "expires_at": future(expires_in)})


def user_events(client, user_id: str) -> list[dict]:
    response = client.get(EVENTS, query_string={"user_id": user_id, "limit": 1000})
    assert response.status_code == 200, response.json
    return [event for event in response.json["data"] if event.get("user_id") == user_id]


def test_a_users_events_come_in_their_exact_order_and_the_whole_feed_needs_a_user(make_app):
    client = make_app().test_client()
    first = post(client, "alice").json["id"]
    post(client, "bob")
    assert client.put(f"{API}/{first}", json={"token": JWT + "2", "expires_at": future()}).status_code == 200
    assert client.delete(f"{API}/{first}").status_code == 200
    assert [(event["type"], event["id"]) for event in user_events(client, "alice")] == [
        ("created", first), ("refreshed", first), ("deleted", first)
    ]
    whole = client.get(EVENTS)
    assert whole.status_code == 422
    assert "user_id" in whole.json["errors"]["query"]
    stream = client.get(EVENTS, headers={"Accept": "text/event-stream"})
    assert stream.status_code == 422 and "user_id" in stream.json["errors"]["query"]


def test_eight_concurrent_saves_for_one_user_leave_exactly_the_limit_on_their_shard(make_app):
    client = make_app(max_tokens_per_user=3).test_client()
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def save(index: int) -> None:
        barrier.wait()
        statuses.append(post(client, "carol", token=f"{JWT}.{index}").status_code)

    threads = [threading.Thread(target=save, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [201] * 8
    assert client.get(API, query_string={"user_id": "carol"}).json["pagination"]["total"] == 3
    kinds = [event["type"] for event in user_events(client, "carol")]
    assert (kinds.count("created"), kinds.count("evicted")) == (8, 5)


def test_clear_with_keep_works_on_the_users_shard_and_refuses_another_users_record(make_app):
    client = make_app().test_client()
    kept = post(client, "dave").json["id"]
    post(client, "dave")
    other = next(post(client, f"u{index}").json["id"] for index in range(50)
                 if shard_of_user(f"u{index}", 4) != shard_of_user("dave", 4))
    refused = client.delete(API, query_string={"user_id": "dave", "keep": other})
    assert refused.status_code == 404
    assert client.get(API, query_string={"user_id": "dave"}).json["pagination"]["total"] == 2
    cleared = client.delete(API, query_string={"user_id": "dave", "keep": kept})
    assert cleared.status_code == 200 and cleared.json["count"] == 1
    assert [item["id"] for item in client.get(API, query_string={"user_id": "dave"}).json["data"]] == [kept]
    assert parse_id(kept) % 4 == shard_of_user("dave", 4)


def test_the_sweeper_tells_each_expiry_once_on_every_shard(make_app):
    app = make_app()
    client = app.test_client()
    users = [f"sweep{index}" for index in range(8)]
    assert len({shard_of_user(user, 4) for user in users}) > 1
    for user in users:
        assert post(client, user, expires_in=1).status_code == 201
    time.sleep(2.2)
    sweeper = ExpirySweeper(app.extensions["sessionsvc"].store)
    sweeper.sweep()  # tells what the later saves have not told already (writes tell due expiries too)
    assert not sweeper.sweep()  # nothing left to tell: 0, never a second event
    for user in users:
        assert [event["type"] for event in user_events(client, user)] == ["created", "expired"]
