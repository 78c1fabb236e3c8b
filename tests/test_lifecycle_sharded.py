"""The session lifecycle on a sharded store (SESSIONSVC_SHARDS = 4): the per-user limit,
clear with keep and the expiry sweeper work shard by shard; a user's events come in their
exact order; the whole store's feed merges the shards' streams, and reading on from any
cursor it gave neither loses nor repeats an event (sessionsvc.store.feed)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import API, JWT, future, post_token
from sessionsvc.store import format_id, parse_id, shard_of_user
from sessionsvc.store.feed import MERGE_ENTRIES
from sessionsvc.sweeper import ExpirySweeper

pytestmark = pytest.mark.parametrize("backend", ["fakeredis-4shards", "redis-4shards"], indirect=True)
EVENTS = f"{API}/events"


def user_events(client, user_id: str) -> list[dict]:
    response = client.get(EVENTS, query_string={"user_id": user_id, "limit": 1000})
    assert response.status_code == 200, response.json
    return [event for event in response.json["data"] if event.get("user_id") == user_id]


def read(client, **query) -> dict:
    response = client.get(EVENTS, query_string=query)
    assert response.status_code == 200, response.json
    return response.json


def read_all(client, limit: int, after: str | None = None, **query) -> list[dict]:
    """Every event of the whole feed from `after` on, `limit` at a time, until a read
    neither serves an event nor moves on."""
    events = []
    while True:
        page = read(client, limit=limit, **query, **({"after": after} if after else {}))
        events += page["data"]
        if not page["data"] and page["next"] == after:
            return events
        after = page["next"]


def without_cursors(events: list[dict]) -> list[dict]:
    """The events as a reader compares them: a merged cursor names a place in every shard's
    stream, and two reads may name the same place differently."""
    return [{name: value for name, value in event.items() if name != "cursor"} for event in events]


def changes(client) -> list[tuple[str, str]]:
    """Creates, refreshes and deletes for sixteen users (on every shard): (type, id) in order."""
    made = []
    for index in range(16):
        record_id = post_token(client, f"member{index}").json["id"]
        made.append(("created", record_id))
        if index % 3 == 0:
            refreshed = client.put(f"{API}/{record_id}", json={"token": JWT + "2", "expires_at": future()})
            assert refreshed.status_code == 200
            made.append(("refreshed", record_id))
        if index % 4 == 0:
            assert client.delete(f"{API}/{record_id}").status_code == 200
            made.append(("deleted", record_id))
    return made


def test_a_users_events_come_in_their_exact_order(make_app):
    client = make_app().test_client()
    first = post_token(client, "alice").json["id"]
    post_token(client, "bob")
    assert client.put(f"{API}/{first}", json={"token": JWT + "2", "expires_at": future()}).status_code == 200
    assert client.delete(f"{API}/{first}").status_code == 200
    assert [(event["type"], event["id"]) for event in user_events(client, "alice")] == [
        ("created", first), ("refreshed", first), ("deleted", first)
    ]


def test_the_whole_feed_holds_every_change_once_with_each_users_in_order_whatever_the_page_size(make_app):
    client = make_app().test_client()
    made = changes(client)
    assert len({shard_of_user(f"member{index}", 4) for index in range(16)}) == 4
    whole = read_all(client, limit=1000)
    assert sorted((event["type"], event["id"]) for event in whole) == sorted(made)
    for index in range(16):
        mine = [(event["type"], event["id"]) for event in whole if event["user_id"] == f"member{index}"]
        assert mine == [(event["type"], event["id"]) for event in user_events(client, f"member{index}")]
    assert [event["at"] for event in whole] == sorted(event["at"] for event in whole)
    for limit in (1, 3, 7):
        assert without_cursors(read_all(client, limit=limit)) == without_cursors(whole)
    assert len({event["cursor"] for event in whole}) == len(whole)


def test_reading_on_from_any_cursor_of_the_whole_feed_serves_exactly_what_came_after_it(make_app):
    client = make_app().test_client()
    changes(client)
    whole = read_all(client, limit=1000)
    for position, event in enumerate(whole):
        rest = read_all(client, limit=5, after=event["cursor"])
        assert without_cursors(rest) == without_cursors(whole[position + 1:])
    last = read(client, limit=1000)["next"]
    later = post_token(client, "late").json["id"]
    assert [(event["type"], event["id"]) for event in read(client, after=last)["data"]] == [("created", later)]


def test_events_written_while_a_consumer_reads_on_are_all_served_once(make_app):
    client = make_app().test_client()
    seen, cursor, written = [], None, []
    for round_number in range(6):
        written += [post_token(client, f"r{round_number}u{index}").json["id"] for index in range(5)]
        page = read(client, limit=4, **({"after": cursor} if cursor else {}))
        seen += page["data"]
        cursor = page["next"]
    seen += read_all(client, limit=4, after=cursor)
    assert sorted(event["id"] for event in seen) == sorted(written)
    assert len(seen) == len(written)


def test_a_type_filter_on_the_whole_feed_keeps_its_place_past_what_it_passed_over(make_app):
    client = make_app().test_client()
    changes(client)
    whole = read_all(client, limit=1000)
    refreshed = without_cursors([event for event in whole if event["type"] == "refreshed"])
    assert len(refreshed) == 6
    for limit in (1, 2, 1000):
        assert without_cursors(read_all(client, limit=limit, type="refreshed")) == refreshed
    caught_up = read(client, type="created", after=whole[-1]["cursor"])
    assert caught_up["data"] == []


def test_a_whole_store_clear_is_one_cleared_event_per_shard_adding_up_to_its_count(make_app):
    client = make_app().test_client()
    for index in range(16):
        post_token(client, f"member{index}")
    cleared = client.delete(API).json["count"]
    events = [event for event in read_all(client, limit=1000) if event["type"] == "cleared"]
    assert len(events) == 4 and sum(event["count"] for event in events) == cleared == 16
    assert all("user_id" not in event and "id" not in event for event in events)
    assert [event["type"] for event in read(client, user_id="member0")["data"]] == ["created", "cleared"]


def test_a_stream_time_reads_every_shard_from_then_and_another_stores_cursor_its_earliest_place(make_app):
    client = make_app().test_client()
    post_token(client, "before")
    time.sleep(0.01)
    middle = f"{int(time.time() * 1000)}-0"
    time.sleep(0.01)
    after_ids = [post_token(client, f"after{index}").json["id"] for index in range(6)]
    assert sorted(event["id"] for event in read(client, after=middle)["data"]) == sorted(after_ids)
    assert read(client, after="99999999999999-0")["data"] == []
    for foreign in ("s0.0.0", "s0....."):  # another store's: read from its earliest place
        assert len(read(client, after=foreign)["data"]) == 7
    for malformed in ("s0.!.0.0.0", "sq.zz"):
        response = client.get(EVENTS, query_string={"after": malformed})
        assert response.status_code == 422 and "after" in response.json["errors"]["query"]


def test_a_cursor_older_than_a_shard_holds_is_410_naming_a_cursor_to_read_on_from(make_app):
    app = make_app(events_maxlen=10)
    client = app.test_client()
    post_token(client, "first")
    first = read(client)["data"][0]["cursor"]
    app.extensions["sessionsvc"].save_many([(f"u{index}", JWT, int(time.time()) + 3600) for index in range(1200)])
    response = client.get(EVENTS, query_string={"after": first})
    assert response.status_code == 410
    oldest = response.json["errors"]["oldest_cursor"]
    assert read(client, after=oldest, limit=1000)["data"]
    streamed = client.get(EVENTS, query_string={"after": first}, headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 410 and streamed.is_json


def test_one_read_of_the_whole_feed_asks_each_shard_a_bounded_number_of_entries(make_app):
    app = make_app()
    client = app.test_client()
    saved = app.extensions["sessionsvc"].save_many([("crowd", JWT, int(time.time()) + 3600)] * 1100)
    page = read(client, limit=1000)
    assert len(page["data"]) == MERGE_ENTRIES // 4  # one shard holds them all; it was asked that many
    rest = read_all(client, limit=1000, after=page["next"])
    assert [event["id"] for event in page["data"] + rest] == [format_id(number) for number in saved]


def test_the_whole_feed_streams_as_server_sent_events_and_resumes_after_last_event_id(make_app):
    client = make_app(events_stream_seconds=1.5).test_client()
    ids = [post_token(client, f"sse{index}").json["id"] for index in range(3)]
    held = read(client)["data"]
    assert sorted(event["id"] for event in held) == sorted(ids)
    response = client.get(EVENTS, headers={"Accept": "text/event-stream", "Last-Event-ID": held[0]["cursor"]},
                          buffered=False)
    assert response.status_code == 200
    text = b"".join(response.response).decode()
    frames = [dict(line.split(": ", 1) for line in frame.split("\n")) for frame in text.split("\n\n")
              if frame.startswith("id:") and "\nevent:" in frame]
    assert [json.loads(frame["data"])["id"] for frame in frames] == [event["id"] for event in held[1:]]
    assert [frame["event"] for frame in frames] == ["created", "created"]
    resumed = read(client, after=frames[-1]["id"])
    assert resumed["data"] == []


def test_eight_concurrent_saves_for_one_user_leave_exactly_the_limit_on_their_shard(make_app):
    client = make_app(max_tokens_per_user=3).test_client()
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def save(index: int) -> None:
        barrier.wait()
        statuses.append(post_token(client, "carol", token=f"{JWT}.{index}").status_code)

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
    kept = post_token(client, "dave").json["id"]
    post_token(client, "dave")
    other = next(post_token(client, f"u{index}").json["id"] for index in range(50)
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
        assert post_token(client, user, expires_in=1).status_code == 201
    time.sleep(2.2)
    sweeper = ExpirySweeper(app.extensions["sessionsvc"].store)
    sweeper.sweep()  # tells what the later saves have not told already (writes tell due expiries too)
    assert not sweeper.sweep()  # nothing left to tell: 0, never a second event
    for user in users:
        assert [event["type"] for event in user_events(client, user)] == ["created", "expired"]
