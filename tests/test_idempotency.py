"""Idempotent POST (the Idempotency-Key header): a client can retry a save without
duplicating a record. Every test runs on fakeredis and real Redis. (Retrying a PUT without
overwriting a change it has not seen, ETag and If-Match: test_conditional_put.py.)"""

from __future__ import annotations

import threading

import pytest

from conftest import API, JWT, every_shard, future
from sessionsvc.crypto import generate_key


def body(**overrides) -> dict:
    return {"user_id": "usr_9a2f31", "token": JWT, "expires_at": future(3600), **overrides}


def total(client) -> int:
    return client.get(API).json["pagination"]["total"]


# --- Idempotency-Key --------------------------------------------------------------------


def test_repeated_post_with_the_same_key_and_body_answers_the_original_and_creates_nothing(client):
    request = body()
    first = client.post(API, json=request, headers={"Idempotency-Key": "k-1"})
    again = client.post(API, json=request, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert total(client) == 1


def test_replay_answers_the_original_even_after_the_record_changed(client):
    request = body()
    first = client.post(API, json=request, headers={"Idempotency-Key": "k-1"})
    record_url = first.headers["Location"]
    assert client.put(record_url, json={"token": JWT + "x", "expires_at": future(60)}).status_code == 200
    again = client.post(API, json=request, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again.json == first.json
    client.delete(record_url)
    assert client.post(API, json=request, headers={"Idempotency-Key": "k-1"}).json == first.json
    assert total(client) == 0


def test_same_key_with_a_different_body_is_422_and_creates_nothing(client):
    client.post(API, json=body(), headers={"Idempotency-Key": "k-1"})
    for changed in (body(token=JWT + "x"), body(user_id="someone-else"), body(expires_at=future(7200))):
        response = client.post(API, json=changed, headers={"Idempotency-Key": "k-1"})
        assert response.status_code == 422
        assert response.json["message"] and "Idempotency-Key" in response.json["errors"]["headers"]
        assert JWT not in response.get_data(as_text=True)
    assert total(client) == 1


def test_equal_bodies_written_differently_count_as_the_same_request(client):
    expires = future(3600)
    offset_form = expires.replace("Z", "+00:00")
    first = client.post(API, json=body(expires_at=expires), headers={"Idempotency-Key": "k"})
    again = client.post(
        API,
        data=f'{{"token": "{JWT}", "expires_at": "{offset_form}", "user_id": "usr_9a2f31"}}',
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert again.status_code == 201 and again.json["id"] == first.json["id"]


def test_different_keys_and_no_key_create_separate_records(client):
    request = body()
    ids = {client.post(API, json=request, headers={"Idempotency-Key": key}).json["id"] for key in ("a", "b")}
    ids |= {client.post(API, json=request).json["id"] for _ in range(2)}
    assert len(ids) == 4


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_malformed_idempotency_key_is_422_naming_the_header(client, key):
    response = client.post(API, json=body(), headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["errors"]["headers"]
    assert total(client) == 0


def test_posts_without_a_key_do_not_change_how_a_later_key_is_read(client):
    assert client.post(API, json=body()).status_code == 201  # no header: parsed once, then reused
    assert client.post(API, json=body(), headers={"Idempotency-Key": ""}).status_code == 422
    request = body()
    first = client.post(API, json=request, headers={"Idempotency-Key": "k-late"})
    again = client.post(API, json=request, headers={"Idempotency-Key": "k-late"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == first.json["id"]
    assert "Idempotent-Replayed" not in client.post(API, json=body()).headers
    assert total(client) == 3


def test_idempotency_record_expires_with_the_window_and_holds_no_token(make_app, raw):
    client = make_app(idempotency_seconds=120).test_client()
    client.post(API, json=body(), headers={"Idempotency-Key": "k-1"})
    (key,) = every_shard(raw, ":idem:*")
    assert b"k-1" not in key
    assert 0 < raw.pttl(key) <= 120_000
    stored = raw.hgetall(key)
    assert JWT.encode() not in b"".join(stored.values())
    assert stored[b"f"].startswith(b"test:") and len(stored[b"f"]) == len("test:") + 64  # a keyed digest


def test_idempotency_survives_a_key_rotation(make_app):
    old_key, new_key = generate_key("old"), generate_key("new")
    request = body()
    first = make_app(encryption_keys=(old_key,)).test_client().post(API, json=request, headers={"Idempotency-Key": "k"})
    rotated = make_app(encryption_keys=(new_key, old_key)).test_client()
    again = rotated.post(API, json=request, headers={"Idempotency-Key": "k"})
    assert again.status_code == 201 and again.json == first.json


def test_idempotency_keys_are_scoped_to_the_api_client(make_app):
    client = make_app(api_keys=("key-one", "key-two")).test_client()
    one, two = ({"Authorization": f"Bearer {key}", "Idempotency-Key": "shared"} for key in ("key-one", "key-two"))
    first = client.post(API, json=body(), headers=one)
    other = client.post(API, json=body(token=JWT + "x"), headers=two)
    assert first.status_code == other.status_code == 201
    assert first.json["id"] != other.json["id"]


def test_concurrent_posts_with_one_key_create_exactly_one_record(make_app):
    apps = [make_app() for _ in range(4)]  # separate apps: separate pools and id blocks, like processes
    request = body()
    answers: list = []
    barrier = threading.Barrier(len(apps) * 2)

    def post(app) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(API, json=request, headers={"Idempotency-Key": "race"})
        answers.append((response.status_code, response.json["id"]))

    threads = [threading.Thread(target=post, args=(app,)) for app in apps for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in answers} == {201}
    assert len({record_id for _, record_id in answers}) == 1
    assert total(apps[0].test_client()) == 1
