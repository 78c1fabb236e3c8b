"""The event stream: one event per change, written in the same step as the change, read as
JSON pages or Server-Sent Events, resumable without loss or duplicate, and a 410 (never a
silent skip) for a reader the stream's bound has left behind."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import API, JWT, TEST_KEYS, future, iso, saved_id
from events_check import disagreements, stream
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.store.events import EVENTS_SCAN_BUDGET
from sessionsvc.sweeper import ExpirySweeper

EVENTS = f"{API}/events"
SSE = {"Accept": "text/event-stream"}


def read(client, **query) -> dict:
    response = client.get(EVENTS, query_string=query)
    assert response.status_code == 200, response.json
    return response.json


# --- what is written ----------------------------------------------------------------------


def test_every_change_appends_one_event_with_its_fields_and_never_the_token(client, raw):
    kept = saved_id(client, token=JWT + ".first-token")
    dropped = saved_id(client, user_id="bob")
    client.put(f"{API}/{kept}", json={"token": JWT + ".second-token", "expires_at": future(7200)})
    client.delete(f"{API}/{dropped}")
    saved_id(client, user_id="bob")
    client.delete(API, query_string={"user_id": "bob"})
    client.delete(API)
    page = read(client)
    assert [event["type"] for event in page["data"]] == [
        "created", "created", "refreshed", "deleted", "created", "cleared", "cleared"]
    created, _, refreshed, deleted, _, user_cleared, all_cleared = page["data"]
    assert set(created) == {"cursor", "type", "at", "id", "user_id", "expires_at"}
    assert (created["id"], created["user_id"]) == (kept, "ann")
    assert refreshed["expires_at"] > created["expires_at"]
    assert (deleted["id"], deleted["user_id"]) == (dropped, "bob")
    assert set(user_cleared) == {"cursor", "type", "at", "user_id", "count"} and user_cleared["count"] == 1
    assert set(all_cleared) == {"cursor", "type", "at", "count"} and all_cleared["count"] == 1
    assert page["next"] == all_cleared["cursor"]
    cursors = [event["cursor"] for event in page["data"]]
    assert cursors == sorted(cursors, key=lambda cursor: tuple(map(int, cursor.split("-"))))
    assert abs(int(cursors[0].split("-")[0]) // 1000 - time.time()) < 5
    assert iso(int(cursors[0].split("-")[0]) // 1000) == created["at"]
    raw_stream = b"".join(value for _, fields in raw.xrange("{sessionsvc}:events") for value in fields.values())
    for secret in (b"first-token", b"second-token", JWT[:8].encode(), b"..."):
        assert secret not in raw_stream


def test_an_idempotent_replay_and_every_refusal_write_no_event(client, make_app):
    record_id = saved_id(client, **{"Idempotency-Key": "once"})
    saved_id(client, **{"Idempotency-Key": "once"})  # replayed: nothing changed
    client.delete(f"{API}/store_999")
    client.put(f"{API}/store_999", json={"token": JWT, "expires_at": future()})
    client.put(f"{API}/{record_id}", json={"token": JWT, "expires_at": future()}, headers={"If-Match": '"999"'})
    client.delete(API, query_string={"user_id": "ann", "keep": "store_999"})
    client.post(API, json={"user_id": "ann", "token": JWT, "expires_at": iso(time.time() - 10)})
    assert [event["type"] for event in read(client)["data"]] == ["created"]


# Actions that produce each event type (with other changes around them).
def produce(kind: str, client, app) -> None:
    if kind == "created":
        for index in range(30):
            saved_id(client, user_id=f"u{index % 3}")
    elif kind == "refreshed":
        ids = [saved_id(client, user_id=f"u{index}") for index in range(3)]
        for round_number in range(10):
            for record_id in ids:
                client.put(f"{API}/{record_id}", json={"token": f"{JWT}.{round_number}", "expires_at": future()})
    elif kind == "deleted":
        for record_id in [saved_id(client, user_id=f"u{index % 3}") for index in range(20)]:
            client.delete(f"{API}/{record_id}")
    elif kind == "cleared":
        for _ in range(5):
            ids = [saved_id(client, user_id=f"u{index % 2}") for index in range(4)]
            client.delete(API, query_string={"user_id": "u0", "keep": ids[0]})
            client.delete(API, query_string={"user_id": "u1"})
            client.delete(API)
    elif kind == "evicted":
        for index in range(30):
            saved_id(client, user_id=f"u{index % 2}")
    elif kind == "expired":
        expires = int(time.time()) + 1
        for index in range(20):
            client.post(API, json={"user_id": f"u{index % 3}", "token": JWT, "expires_at": iso(expires)})
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        sweeper = ExpirySweeper(app.extensions["sessionsvc"].store, batch=3)
        while sweeper.sweep():
            pass


@pytest.mark.parametrize("kind", ["created", "refreshed", "deleted", "cleared", "evicted", "expired"])
def test_no_reader_ever_sees_a_change_without_its_event_or_an_event_without_its_change(make_app, raw, kind):
    """An independent reader takes atomic snapshots of records and stream all along,
    from another thread; each must agree (and agree after every step)."""
    app = make_app(max_tokens_per_user=2 if kind == "evicted" else 0)
    client = app.test_client()
    problems: list[list[str]] = []
    snapshots = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal snapshots
        while not stop.is_set():
            found = disagreements(raw)
            snapshots += 1
            if found:
                problems.append(found)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        produce(kind, client, app)
    finally:
        stop.set()
        thread.join(30)
    assert problems == []
    assert snapshots > 1
    assert disagreements(raw) == []
    assert kind in {event["type"] for event in stream(raw)}


# --- reading -----------------------------------------------------------------------------


def test_resuming_from_next_after_a_gap_loses_nothing_and_repeats_nothing(client):
    written: list[str] = []
    seen: list[dict] = []
    cursor = None
    for round_number in range(6):
        written += [saved_id(client, user_id=f"u{index}") for index in range(round_number * 5, round_number * 5 + 7)]
        query = {"limit": 4} if cursor is None else {"limit": 4, "after": cursor}
        page = read(client, **query)
        seen += page["data"]
        cursor = page["next"]
    while True:
        page = read(client, limit=4, after=cursor)
        if not page["data"]:
            assert page["next"] == cursor  # caught up: read again from the same place
            break
        seen += page["data"]
        cursor = page["next"]
    assert [event["id"] for event in seen] == written
    assert len({event["cursor"] for event in seen}) == len(seen)


def test_a_cursor_older_than_the_stream_holds_is_410_naming_the_oldest_cursor_held(make_app):
    app = make_app(events_maxlen=10)
    client = app.test_client()
    saved_id(client)
    first = read(client)["data"][0]["cursor"]
    assert read(client, after=first)["data"] == []
    app.extensions["sessionsvc"].save_many([(f"u{index}", JWT, int(time.time()) + 3600) for index in range(400)])
    oldest = read(client, limit=1)["data"][0]["cursor"]
    assert oldest != first
    for stale in (first, "0-0"):
        response = client.get(EVENTS, query_string={"after": stale})
        assert response.status_code == 410
        assert response.json["errors"]["oldest_cursor"] == oldest
        streamed = client.get(EVENTS, query_string={"after": stale}, headers=SSE)
        assert streamed.status_code == 410 and streamed.is_json
    resumed = read(client, after=oldest, limit=1000)["data"]
    assert resumed and resumed[0]["cursor"] != oldest  # strictly after it


def test_a_cursor_from_before_any_trimming_is_not_refused(client):
    saved_id(client)
    assert [event["type"] for event in read(client, after="0-0")["data"]] == ["created"]
    assert read(client, after="99999999999999-0") == {"data": [], "next": "99999999999999-0"}


def test_filters_match_by_user_and_type_and_whole_store_clears_reach_every_user(client):
    ann = saved_id(client)
    saved_id(client, user_id="bob")
    client.put(f"{API}/{ann}", json={"token": JWT, "expires_at": future()})
    client.delete(API)
    assert [event["type"] for event in read(client, user_id="ann")["data"]] == ["created", "refreshed", "cleared"]
    assert [event["user_id"] for event in read(client, type="created")["data"]] == ["ann", "bob"]
    assert [event["id"] for event in read(client, user_id="ann", type="refreshed")["data"]] == [ann]
    assert read(client, user_id="nobody", type="created")["data"] == []


def test_a_filtered_read_scans_a_bounded_number_of_entries_and_next_points_past_them(client, vault):
    vault.save_many([("crowd", JWT, int(time.time()) + 3600)] * (EVENTS_SCAN_BUDGET + 5))
    needle = saved_id(client, user_id="needle")
    first = read(client, user_id="needle")
    assert first["data"] == []
    second = read(client, user_id="needle", after=first["next"])
    assert [event["id"] for event in second["data"]] == [needle]
    everything = read(client, limit=1000)
    assert first["next"] == everything["data"][EVENTS_SCAN_BUDGET - 1]["cursor"]


@pytest.mark.parametrize(
    ("query", "headers", "field"),
    [
        ({"after": "yesterday"}, {}, "after"),
        ({"after": "1-2-3"}, {}, "after"),
        ({"after": "1" * 16 + "-0"}, {}, "after"),
        ({"limit": 0}, {}, "limit"),
        ({"limit": 1001}, {}, "limit"),
        ({"type": "renamed"}, {}, "type"),
        ({"user_id": "a b"}, {}, "user_id"),
        ({}, {"Last-Event-ID": "soon", **SSE}, "Last-Event-ID"),
    ],
)
def test_bad_event_queries_are_422_naming_the_field(client, query, headers, field):
    response = client.get(EVENTS, query_string=query, headers=headers)
    assert response.status_code == 422 and response.is_json
    assert field in {name for location in response.json["errors"].values() for name in location}


def test_events_is_a_literal_segment_not_a_record_id(client):
    saved_id(client)
    assert client.get(EVENTS).status_code == 200
    for method in ("put", "delete", "post"):
        assert getattr(client, method)(EVENTS).status_code == 405
    assert client.get(f"{API}/events/x").status_code == 404


def test_events_need_an_api_key_when_keys_are_configured(make_app):
    key = "events-test-api-key-0123456789abcdef"
    client = make_app(api_keys=(key,)).test_client()
    assert client.get(EVENTS).status_code == 401
    assert client.get(EVENTS, headers=SSE).status_code == 401
    assert client.get(EVENTS, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_events_answer_503_with_retry_after_when_redis_is_down():
    config = Config(encryption_keys=TEST_KEYS, redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=0.2,
                    expiry_sweep=False)
    client = create_app(config).test_client()
    for headers in ({}, SSE):
        response = client.get(EVENTS, headers=headers)
        assert response.status_code == 503 and response.is_json and response.headers["Retry-After"]


# --- Server-Sent Events ------------------------------------------------------------------


def frames(response, until: float) -> list[str]:
    """The SSE frames (blank-line separated) a streaming response sends before `until`
    (a monotonic time) or its end."""
    text, found = "", []
    for chunk in response.response:
        text += chunk.decode()
        *complete, text = text.split("\n\n")
        found += complete
        if time.monotonic() > until:
            break
    return found


def fields_of(frame: str) -> dict[str, str]:
    return {name: value.strip() for name, _, value in (line.partition(":") for line in frame.split("\n"))}


def test_event_stream_sends_held_events_then_new_ones_with_heartbeats_and_ends_in_bounded_time(make_app):
    client = make_app(events_stream_seconds=2, events_heartbeat_seconds=0.3).test_client()
    first = saved_id(client)
    threading.Timer(0.6, lambda: saved_id(client, user_id="late")).start()
    started = time.monotonic()
    response = client.get(EVENTS, headers=SSE, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    received = frames(response, started + 10)
    assert time.monotonic() - started < 5  # it ended by itself
    assert received[0].startswith("retry:")
    events = [fields_of(frame) for frame in received if frame.startswith("id:")]
    assert [(event["event"], event["id"]) for event in events][:1] == [("created", read(client)["data"][0]["cursor"])]
    assert [event["event"] for event in events] == ["created", "created"]
    assert '"id":"' + first + '"' in events[0]["data"] and '"user_id":"late"' in events[1]["data"]
    assert any(frame.startswith(": heartbeat") for frame in received)


def test_event_stream_resumes_after_last_event_id_which_wins_over_after(make_app):
    client = make_app(events_stream_seconds=1).test_client()
    ids = [saved_id(client, user_id=f"u{index}") for index in range(3)]
    cursors = [event["cursor"] for event in read(client)["data"]]
    response = client.get(EVENTS, query_string={"after": cursors[0]},
                          headers={**SSE, "Last-Event-ID": cursors[1]}, buffered=False)
    events = [fields_of(frame) for frame in frames(response, time.monotonic() + 10) if frame.startswith("id:")]
    assert [event["id"] for event in events] == [cursors[2]]
    assert ids[2] in events[0]["data"]


def test_a_filtered_event_stream_moves_the_resume_point_past_what_it_passed_over(make_app):
    client = make_app(events_stream_seconds=1).test_client()
    saved_id(client, user_id="bob")
    saved_id(client, user_id="bob")
    last = read(client)["next"]
    response = client.get(EVENTS, query_string={"user_id": "ann"}, headers=SSE, buffered=False)
    received = frames(response, time.monotonic() + 10)
    assert f"id: {last}" in received
    assert not [frame for frame in received if frame.startswith("event:") or "\nevent:" in frame]


def test_an_event_stream_stops_when_the_client_goes(make_app):
    client = make_app(events_stream_seconds=60, events_heartbeat_seconds=0.2).test_client()
    saved_id(client)
    response = client.get(EVENTS, headers=SSE, buffered=False)
    iterator = iter(response.response)
    next(iterator)
    started = time.monotonic()
    response.close()  # what the server does when writing to a gone client fails
    assert time.monotonic() - started < 2
    with pytest.raises(StopIteration):
        next(iterator)


def test_event_streams_past_the_per_process_bound_are_503_until_one_ends(make_app):
    """Each waiting stream holds a Redis connection of the pool: the bound keeps the pool
    for requests."""
    client = make_app(events_max_streams=1, events_stream_seconds=30).test_client()
    saved_id(client)
    first = client.get(EVENTS, headers=SSE, buffered=False)
    assert first.status_code == 200
    refused = client.get(EVENTS, headers=SSE)
    assert refused.status_code == 503 and refused.is_json and refused.headers["Retry-After"]
    assert client.get(EVENTS).status_code == 200  # JSON pages are not streams
    first.close()
    second = client.get(EVENTS, headers=SSE, buffered=False)
    assert second.status_code == 200
    second.close()


def test_a_merged_feeds_cursor_on_a_store_without_shards_reads_from_the_earliest_place_it_names(client):
    """A cursor of a sharded store's whole feed (another store's): nothing after its
    earliest place is skipped; a place before every event reads them all."""
    saved_id(client)
    events = read(client)["data"]
    ms, _, sequence = events[0]["cursor"].partition("-")
    base = int(ms) - 5
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def base36(number: int) -> str:
        return digits[number] if number < 36 else base36(number // 36) + digits[number % 36]

    later = f"s{base36(base)}.{base36(int(ms) + 1000 - base)}.0"  # earliest place: 5 ms before the event
    for query in ({"after": later}, {"after": later, "user_id": "ann"}, {"after": "s0.."}):
        response = client.get(EVENTS, query_string=query)
        assert response.status_code == 200, query
        assert [event["id"] for event in response.json["data"]] == [events[0]["id"]]
