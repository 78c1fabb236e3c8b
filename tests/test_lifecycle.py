"""Session lifecycle: the per-user limit (SESSIONSVC_MAX_TOKENS_PER_USER, enforced by the
create script) and "sign out everywhere else" (DELETE ?user_id=U&keep=<id>)."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import API, JWT, TEST_KEYS, future, iso, post_token, redis_url
from events_check import disagreements, stream
from sessionsvc import create_app
from sessionsvc.config import Config, ConfigError


def held_ids(client, user: str = "ann") -> list[str]:
    return [item["id"] for item in client.get(API, query_string={"user_id": user, "limit": 100}).json["data"]]


def events(client, **query) -> list[dict]:
    return client.get(f"{API}/events", query_string={"limit": 1000, **query}).json["data"]


# --- per-user limit --------------------------------------------------------------------


def test_over_the_limit_a_save_evicts_the_least_recently_saved_records(make_app, raw):
    client = make_app(max_tokens_per_user=3).test_client()
    first, second, third = (post_token(client).json["id"] for _ in range(3))
    client.put(f"{API}/{first}", json={"token": JWT + "x", "expires_at": future()})  # a PUT is a save too
    other = post_token(client, user_id="bob").json["id"]
    fourth = post_token(client).json["id"]
    assert held_ids(client) == [fourth, first, third]
    assert held_ids(client, "bob") == [other]
    assert client.get(f"{API}/{second}").status_code == 404
    evicted = events(client, type="evicted")
    assert [(event["id"], event["user_id"]) for event in evicted] == [(second, "ann")]
    assert "expires_at" in evicted[0]
    assert [event["type"] for event in events(client)][-2:] == ["evicted", "created"]
    assert disagreements(raw) == []


def test_with_policy_reject_a_save_over_the_limit_is_409_and_stores_nothing(make_app, raw):
    client = make_app(max_tokens_per_user=2, user_limit_policy="reject").test_client()
    kept = [post_token(client).json["id"] for _ in range(2)]
    before = len(events(client))
    refused = post_token(client, **{"Idempotency-Key": "k-1"})
    assert refused.status_code == 409
    assert refused.json["code"] == 409 and refused.json["message"] and JWT not in refused.get_data(as_text=True)
    assert held_ids(client) == kept[::-1]
    assert len(events(client)) == before
    assert post_token(client, user_id="bob").status_code == 201  # the limit is per user
    client.delete(f"{API}/{kept[0]}")
    assert post_token(client, **{"Idempotency-Key": "k-1"}).status_code == 201  # a refusal did not use the key up
    assert disagreements(raw) == []


def test_records_past_expiry_count_until_retention_ends_and_then_no_longer(make_app):
    client = make_app(max_tokens_per_user=2, user_limit_policy="reject", retention_seconds=1).test_client()
    expires = int(time.time()) + 2
    for token in ("short-lived-token-0001", "short-lived-token-0002"):
        assert client.post(API, json={"user_id": "ann", "token": token, "expires_at": iso(expires)}).status_code == 201
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    assert post_token(client).status_code == 409  # expired, still held (retention)
    time.sleep(1.2)
    assert post_token(client).status_code == 201  # retention over: no longer held
    assert len(held_ids(client)) == 1


def test_no_limit_by_default(make_app):
    client = make_app().test_client()
    for _ in range(12):
        assert post_token(client).status_code == 201
    assert len(held_ids(client)) == 12


@pytest.mark.parametrize("policy", ["evict_oldest", "reject"])
def test_eight_concurrent_saves_for_one_user_leave_exactly_the_limit(make_app, raw, policy):
    client = make_app(max_tokens_per_user=3, user_limit_policy=policy).test_client()
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def save(index: int) -> None:
        barrier.wait()
        statuses.append(post_token(client, token=f"{JWT}.{index}").status_code)

    threads = [threading.Thread(target=save, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(held_ids(client)) == 3
    kinds = [event["type"] for event in events(client)]
    if policy == "evict_oldest":
        assert sorted(statuses) == [201] * 8
        assert (kinds.count("created"), kinds.count("evicted")) == (8, 5)
    else:
        assert sorted(statuses) == [201] * 3 + [409] * 5
        assert (kinds.count("created"), kinds.count("evicted")) == (3, 0)
    assert disagreements(raw) == []


def test_concurrent_saves_through_two_app_instances_on_one_redis_leave_exactly_the_limit(real_redis, tmp_path):
    apps = [create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis), max_tokens_per_user=3,
                              expiry_sweep=False)) for _ in range(2)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def save(index: int) -> None:
        client = apps[index % 2].test_client()
        barrier.wait()
        for round_number in range(3):
            statuses.append(post_token(client, token=f"{JWT}.{index}.{round_number}").status_code)

    threads = [threading.Thread(target=save, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [201] * 24
    assert len(held_ids(apps[0].test_client())) == 3
    kinds = [event["type"] for event in stream(real_redis)]
    assert (kinds.count("created"), kinds.count("evicted")) == (24, 21)
    assert disagreements(real_redis) == []


def test_an_index_entry_naming_another_users_record_is_never_evicted_for_this_user(make_app, raw):
    client = make_app(max_tokens_per_user=2).test_client()
    bobs = post_token(client, user_id="bob").json["id"]
    ann_first = post_token(client).json["id"]
    raw.zadd("{sessionsvc}:u:0:ann", {bobs[6:].lstrip("0"): 0})  # tampering: bob's record in ann's index
    ann_second, ann_third = post_token(client).json["id"], post_token(client).json["id"]
    assert client.get(f"{API}/{bobs}").status_code == 200
    assert held_ids(client, "bob") == [bobs]
    assert set(held_ids(client)) <= {ann_first, ann_second, ann_third} and ann_third in held_ids(client)
    assert not [event for event in events(client, type="evicted") if event["id"] == bobs]


# --- sign out everywhere else ----------------------------------------------------------


def test_clear_with_keep_removes_every_other_record_of_that_user_in_one_event(client, raw):
    ann = [post_token(client).json["id"] for _ in range(4)]
    bob = post_token(client, user_id="bob").json["id"]
    response = client.delete(API, query_string={"user_id": "ann", "keep": ann[1]})
    assert response.status_code == 200
    assert response.json == {"cleared": True, "message": "All session tokens cleared from secure storage", "count": 3}
    assert held_ids(client) == [ann[1]]
    assert held_ids(client, "bob") == [bob]
    assert client.get(f"{API}/current", query_string={"user_id": "ann"}).json["token"] == JWT
    cleared = events(client)[-1]
    assert {key: cleared[key] for key in ("type", "user_id", "count", "kept")} == {
        "type": "cleared", "user_id": "ann", "count": 3, "kept": ann[1]}
    assert "id" not in cleared
    # The kept record goes on as before: listed, refreshable, cleared by a later plain clear.
    assert client.put(f"{API}/{ann[1]}", json={"token": JWT + "y", "expires_at": future()}).status_code == 200
    assert client.delete(API, query_string={"user_id": "ann"}).json["count"] == 1
    assert disagreements(raw) == []


def test_keep_without_user_id_is_422_naming_keep_and_clears_nothing(client, raw):
    kept = post_token(client).json["id"]
    before = len(events(client))
    response = client.delete(API, query_string={"keep": kept})
    assert response.status_code == 422
    assert "keep" in response.json["errors"]["query"]
    assert held_ids(client) == [kept] and len(events(client)) == before


@pytest.mark.parametrize("keep", ["other-user", "unknown", "deleted", "malformed"])
def test_keep_that_is_not_a_held_record_of_the_user_is_404_and_clears_nothing(client, raw, keep):
    ann = [post_token(client).json["id"] for _ in range(2)]
    bobs = post_token(client, user_id="bob").json["id"]
    gone = post_token(client).json["id"]
    client.delete(f"{API}/{gone}")
    keep_id = {"other-user": bobs, "unknown": "store_999", "deleted": gone, "malformed": "nope"}[keep]
    before = len(events(client))
    response = client.delete(API, query_string={"user_id": "ann", "keep": keep_id})
    assert response.status_code == 404 and response.json["code"] == 404
    assert held_ids(client) == ann[::-1] and held_ids(client, "bob") == [bobs]
    assert len(events(client)) == before


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SESSIONSVC_USER_LIMIT_POLICY": "drop_newest"}, "SESSIONSVC_USER_LIMIT_POLICY"),
        ({"SESSIONSVC_MAX_TOKENS_PER_USER": "-1"}, "SESSIONSVC_MAX_TOKENS_PER_USER"),
        ({"SESSIONSVC_EVENTS_MAXLEN": "0"}, "SESSIONSVC_EVENTS_MAXLEN"),
        ({"SESSIONSVC_EXPIRY_SWEEP": "maybe"}, "SESSIONSVC_EXPIRY_SWEEP"),
        ({"SESSIONSVC_EVENTS_STREAM_SECONDS": "0"}, "SESSIONSVC_EVENTS_STREAM_SECONDS"),
    ],
)
def test_bad_lifecycle_settings_refuse_to_start_naming_the_variable(environ, named):
    with pytest.raises(ConfigError, match=named):
        Config.from_env(environ).check()


def test_lifecycle_settings_are_read_from_the_environment():
    config = Config.from_env({
        "SESSIONSVC_MAX_TOKENS_PER_USER": "5", "SESSIONSVC_USER_LIMIT_POLICY": "reject",
        "SESSIONSVC_EVENTS_MAXLEN": "1000", "SESSIONSVC_EXPIRY_SWEEP": "false",
    })
    config.check()
    assert (config.max_tokens_per_user, config.user_limit_policy, config.events_maxlen, config.expiry_sweep) == (
        5, "reject", 1000, False)
    assert Config().expiry_sweep is True and Config().max_tokens_per_user == 0
