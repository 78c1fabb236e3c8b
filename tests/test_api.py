"""The contract's 8 endpoints, field by field; every test runs on fakeredis and real Redis."""

from __future__ import annotations

import re
import time

import pytest

from conftest import API, JWT, future, iso, nth_id

SUMMARY_FIELDS = ["id", "user_id", "token_preview", "expires_at", "is_valid", "saved_at"]


def total(client, **query) -> int:
    return client.get(API, query_string=query).json["pagination"]["total"]


# --- POST ------------------------------------------------------------------------------


def test_post_returns_201_summary_with_created_at_and_location(client, shards):
    expires = future(3600)
    response = client.post(API, json={"user_id": "usr_9a2f31", "token": JWT, "expires_at": expires})
    assert response.status_code == 201
    body = response.json
    assert list(body) == SUMMARY_FIELDS + ["created_at"]
    assert body["id"] == nth_id(shards, "usr_9a2f31", 1)  # store_001 in a store of one shard
    assert body["user_id"] == "usr_9a2f31"
    assert body["token_preview"] == "eyJhbGci...Q3Yk"
    assert body["expires_at"] == expires
    assert body["is_valid"] is True
    assert body["saved_at"] == body["created_at"]
    assert response.headers["Location"] == f"{API}/{body['id']}"
    assert "token" not in body


def test_ids_are_sequential_zero_padded_and_never_reused_after_clear(client, save, shards):
    # One shard: store_001, store_002, ...; S shards: each shard's counter times S plus the shard.
    user = "usr_9a2f31"
    assert [save(user)["id"] for _ in range(3)] == [nth_id(shards, user, nth) for nth in (1, 2, 3)]
    client.delete(API)
    assert save(user)["id"] == nth_id(shards, user, 4)


def test_timestamps_are_rfc3339_utc_whole_seconds(client, save):
    body = save()
    for name in ("expires_at", "saved_at", "created_at"):
        assert time.strptime(body[name], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(time.mktime(time.strptime(body["saved_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 5


def test_expires_at_with_offset_is_normalised_to_utc_and_fraction_dropped(client):
    target = int(time.time()) + 7200
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(target + 3600)) + ".987+01:00"
    response = client.post(API, json={"user_id": "u1", "token": JWT, "expires_at": local})
    assert response.status_code == 201
    assert response.json["expires_at"] == iso(target)


@pytest.mark.parametrize(
    "token, preview",
    [
        ("a" * 8 + "b" * 12 + "WXYZ", "aaaaaaaa...WXYZ"),  # 24 characters
        ("abcd" + "x" * 19, "abcd..."),  # 23
        ("abcd" + "x" * 8, "abcd..."),  # 12
        ("abcdefghijk", "..."),  # 11
        ("a", "..."),
    ],
)
def test_preview_shows_only_the_edges_of_long_tokens(client, save, token, preview):
    assert save(token=token)["token_preview"] == preview
    assert client.get(API).json["data"][0]["token_preview"] == preview


# --- GET /<id> --------------------------------------------------------------------------


def test_get_by_id_returns_the_full_token(client, save):
    created = save(token=JWT)
    response = client.get(f"{API}/{created['id']}")
    assert response.status_code == 200
    assert list(response.json) == ["id", "user_id", "token", "expires_at", "is_valid", "saved_at"]
    assert response.json["token"] == JWT
    assert response.json["expires_at"] == created["expires_at"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("bad_id", ["store_999", "store_1", "store_0001", "store_", "store_abc", "nope", "store_-1"])
def test_unknown_or_malformed_id_is_404_json(client, save, bad_id):
    save()
    for method in ("get", "delete"):
        response = getattr(client, method)(f"{API}/{bad_id}")
        assert response.status_code == 404
        assert response.json["code"] == 404 and response.json["message"]
    response = client.put(f"{API}/{bad_id}", json={"token": JWT, "expires_at": future()})
    assert response.status_code == 404


# --- GET list ---------------------------------------------------------------------------


def test_list_shows_summaries_most_recently_saved_first(client, save):
    first, second, third = save(user_id="a"), save(user_id="b"), save(user_id="a")
    response = client.get(API)
    assert response.status_code == 200
    assert list(response.json) == ["data", "pagination"]
    assert [row["id"] for row in response.json["data"]] == [third["id"], second["id"], first["id"]]
    assert all(list(row) == SUMMARY_FIELDS for row in response.json["data"])
    assert response.json["pagination"] == {"page": 1, "limit": 20, "total": 3}
    assert JWT not in response.get_data(as_text=True)


def test_refresh_moves_a_record_to_the_front_even_within_one_second(client, save):
    first, second = save(), save()
    client.put(f"{API}/{first['id']}", json={"token": JWT + "x", "expires_at": future()})
    assert [row["id"] for row in client.get(API).json["data"]] == [first["id"], second["id"]]


def test_list_pages_and_a_page_past_the_end_is_empty(client, save):
    ids = [save()["id"] for _ in range(5)]
    newest_first = list(reversed(ids))
    page2 = client.get(API, query_string={"page": 2, "limit": 2}).json
    assert [row["id"] for row in page2["data"]] == newest_first[2:4]
    assert page2["pagination"] == {"page": 2, "limit": 2, "total": 5}
    page3 = client.get(API, query_string={"page": 3, "limit": 2}).json
    assert [row["id"] for row in page3["data"]] == newest_first[4:]
    beyond = client.get(API, query_string={"page": 9, "limit": 2})
    assert beyond.status_code == 200 and beyond.json["data"] == [] and beyond.json["pagination"]["total"] == 5


def test_list_filters_by_user(client, save):
    save(user_id="alice"), save(user_id="bob"), save(user_id="alice")
    body = client.get(API, query_string={"user_id": "alice"}).json
    assert {row["user_id"] for row in body["data"]} == {"alice"}
    assert body["pagination"]["total"] == 2
    assert total(client, user_id="nobody") == 0


@pytest.mark.parametrize(
    "query, field",
    [({"page": 0}, "page"), ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"page": "x"}, "page"),
     ({"user_id": "a b"}, "user_id")],
)
def test_list_rejects_out_of_range_query_naming_the_field(client, query, field):
    response = client.get(API, query_string=query)
    assert response.status_code == 422
    assert field in response.json["errors"]["query"]


def test_list_limit_of_100_is_allowed(client, save):
    save()
    assert client.get(API, query_string={"limit": 100}).json["pagination"]["limit"] == 100


def links(response) -> dict[str, str]:
    return {
        relation: target
        for target, relation in re.findall(r'<([^>]*)>; rel="([a-z]+)"', response.headers["Link"])
    }


def test_list_pages_carry_rfc8288_links(client, save):
    for _ in range(5):
        save(user_id="usr_pages")
    middle = links(client.get(API, query_string={"page": 2, "limit": 2, "user_id": "usr_pages"}))
    assert middle == {
        "first": f"{API}?page=1&limit=2&user_id=usr_pages",
        "prev": f"{API}?page=1&limit=2&user_id=usr_pages",
        "next": f"{API}?page=3&limit=2&user_id=usr_pages",
        "last": f"{API}?page=3&limit=2&user_id=usr_pages",
    }
    assert set(links(client.get(API, query_string={"limit": 2}))) == {"first", "next", "last"}
    assert set(links(client.get(API, query_string={"page": 3, "limit": 2}))) == {"first", "prev", "last"}
    beyond = links(client.get(API, query_string={"page": 9, "limit": 2}))
    assert beyond["prev"] == beyond["last"] == f"{API}?page=3&limit=2"


def test_an_empty_listing_links_to_its_one_page(client):
    assert links(client.get(API)) == {"first": f"{API}?page=1&limit=20", "last": f"{API}?page=1&limit=20"}


# --- current / validity -----------------------------------------------------------------


def test_current_is_the_most_recently_saved_record(client, save):
    save(token="first-token-aaaaaaaaaaaaaaaa")
    save(token="second-token-bbbbbbbbbbbbbbb")
    response = client.get(f"{API}/current")
    assert response.status_code == 200
    assert list(response.json) == ["token", "expires_at", "is_valid"]
    assert response.json["token"] == "second-token-bbbbbbbbbbbbbbb"
    assert response.json["is_valid"] is True
    assert response.headers["Cache-Control"] == "no-store"


def test_current_follows_a_refresh_and_can_be_narrowed_to_a_user(client, save):
    alice = save(user_id="alice", token="alice-token-1")
    save(user_id="bob", token="bob-token-1")
    client.put(f"{API}/{alice['id']}", json={"token": "alice-token-2", "expires_at": future()})
    assert client.get(f"{API}/current").json["token"] == "alice-token-2"
    assert client.get(f"{API}/current", query_string={"user_id": "bob"}).json["token"] == "bob-token-1"


def test_current_is_404_when_nothing_is_stored(client, save):
    assert client.get(f"{API}/current").status_code == 404
    save(user_id="alice")
    response = client.get(f"{API}/current", query_string={"user_id": "bob"})
    assert response.status_code == 404 and response.json["message"]


def test_current_and_validity_are_not_taken_as_ids(client, save):
    save()
    assert client.get(f"{API}/current").json.keys() == {"token", "expires_at", "is_valid"}
    assert client.get(f"{API}/validity").json.keys() == {"is_valid", "expires_at", "seconds_remaining"}


def test_validity_describes_the_current_record(client, save):
    created = save(expires_in=3600)
    response = client.get(f"{API}/validity")
    assert response.status_code == 200
    assert list(response.json) == ["is_valid", "expires_at", "seconds_remaining"]
    assert response.json["is_valid"] is True
    assert response.json["expires_at"] == created["expires_at"]
    assert 3590 <= response.json["seconds_remaining"] <= 3600


def test_validity_without_a_record_is_200_invalid(client):
    response = client.get(f"{API}/validity")
    assert response.status_code == 200
    assert response.json == {"is_valid": False, "expires_at": None, "seconds_remaining": 0}


# --- PUT --------------------------------------------------------------------------------


def test_put_refreshes_token_expiry_preview_and_saved_at(client, save):
    created = save(token=JWT)
    new_token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.refreshed-Zm2w"
    expires = future(7200)
    response = client.put(f"{API}/{created['id']}", json={"token": new_token, "expires_at": expires})
    assert response.status_code == 200
    assert list(response.json) == SUMMARY_FIELDS
    assert response.json["id"] == created["id"] and response.json["user_id"] == created["user_id"]
    assert response.json["token_preview"] == "eyJhbGci...Zm2w"
    assert response.json["expires_at"] == expires
    assert response.json["saved_at"] >= created["saved_at"]
    assert client.get(f"{API}/{created['id']}").json["token"] == new_token


def test_put_cannot_change_user_and_needs_token_and_expiry(client, save):
    created = save(user_id="alice", token=JWT)
    url = f"{API}/{created['id']}"
    response = client.put(url, json={"user_id": "mallory", "token": "x" * 30, "expires_at": future()})
    assert response.status_code == 422 and "user_id" in response.json["errors"]["json"]
    response = client.put(url, json={"token": "x" * 30})
    assert response.status_code == 422 and "expires_at" in response.json["errors"]["json"]
    response = client.put(url, json={"expires_at": future()})
    assert response.status_code == 422 and "token" in response.json["errors"]["json"]
    detail = client.get(url).json
    assert detail["user_id"] == "alice" and detail["token"] == JWT


# --- DELETE -----------------------------------------------------------------------------


def test_delete_one_removes_it_everywhere(client, save):
    keep, gone = save(user_id="a"), save(user_id="a")
    response = client.delete(f"{API}/{gone['id']}")
    assert response.status_code == 200
    assert response.json == {"deleted": True, "id": gone["id"]}
    assert client.get(f"{API}/{gone['id']}").status_code == 404
    assert [row["id"] for row in client.get(API).json["data"]] == [keep["id"]]
    assert client.get(f"{API}/current").json["token"] == client.get(f"{API}/{keep['id']}").json["token"]
    assert client.delete(f"{API}/{gone['id']}").status_code == 404


def test_clear_all_answers_the_contract_message_and_empties_everything(client, save):
    ids = [save(user_id=f"u{i % 2}")["id"] for i in range(4)]
    response = client.delete(API)
    assert response.status_code == 200
    assert response.json["cleared"] is True
    assert response.json["message"] == "All session tokens cleared from secure storage"
    assert response.json["count"] == 4
    assert list(response.json)[:2] == ["cleared", "message"]
    assert total(client) == 0
    assert all(client.get(f"{API}/{record_id}").status_code == 404 for record_id in ids)
    assert client.get(f"{API}/current").status_code == 404
    assert client.put(f"{API}/{ids[0]}", json={"token": JWT, "expires_at": future()}).status_code == 404


def test_clear_for_one_user_leaves_the_others(client, save):
    alice, bob = save(user_id="alice"), save(user_id="bob")
    response = client.delete(API, query_string={"user_id": "alice"})
    assert response.status_code == 200 and response.json["count"] == 1
    assert client.get(f"{API}/{alice['id']}").status_code == 404
    assert client.get(f"{API}/{bob['id']}").status_code == 200
    assert total(client) == 1


def test_clear_frees_the_old_records_in_redis_after_answering(client, save, raw):
    for _ in range(5):
        save()
    response = client.delete(API)
    response.close()  # the server closes the response once sent; reclaiming runs then
    assert [key for key in raw.keys("*") if b":r:" in key] == []
    assert raw.scard("{sessionsvc}:reclaim") == 0


# --- paths, methods, errors -------------------------------------------------------------


def test_doubled_contract_paths_reach_the_same_handlers(client, save):
    doubled = API + API
    created = client.post(doubled, json={"user_id": "u", "token": JWT, "expires_at": future()})
    assert created.status_code == 201
    assert client.get(f"{doubled}/{created.json['id']}").json["token"] == JWT
    assert client.get(doubled).json["pagination"]["total"] == 1
    assert client.get(f"{doubled}/current").status_code == 200
    assert client.get(f"{doubled}/validity").json["is_valid"] is True
    assert client.put(f"{doubled}/{created.json['id']}", json={"token": JWT, "expires_at": future()}).status_code == 200
    assert client.delete(f"{doubled}/{created.json['id']}").status_code == 200
    assert client.delete(doubled).status_code == 200
    paths = client.get("/openapi.json").json["paths"]
    assert not any(path.startswith(doubled) for path in paths)


def test_canonical_paths_answer_without_redirect(client):
    assert client.get(API).status_code == 200
    assert client.get(f"{API}/current").status_code in (200, 404)


def test_unknown_route_and_wrong_method_are_json(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.is_json and set(response.json) >= {"code", "status", "message"}
    response = client.patch(API)
    assert response.status_code == 405 and response.is_json and response.json["message"]
    response = client.post(f"{API}/current", json={})
    assert response.status_code == 405 and response.is_json


@pytest.mark.parametrize("literal", ["current", "validity"])
@pytest.mark.parametrize("method", ["put", "delete"])
def test_literal_routes_refuse_item_methods_instead_of_looking_up_a_record(client, save, literal, method):
    save()
    response = getattr(client, method)(f"{API}/{literal}", json={"token": "abc", "expires_at": future()})
    assert response.status_code == 405 and response.is_json
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}
    assert client.open(f"{API}/{literal}", method="OPTIONS").headers["Allow"].count("PUT") == 0


def test_openapi_lists_the_eight_operations(client):
    spec = client.get("/openapi.json").json
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete")}
    assert operations >= {
        ("GET", API), ("POST", API), ("DELETE", API), ("GET", f"{API}/current"), ("GET", f"{API}/validity"),
        ("GET", f"{API}/{{record_id}}"), ("PUT", f"{API}/{{record_id}}"), ("DELETE", f"{API}/{{record_id}}"),
    }


def test_swagger_ui_is_served_from_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "swagger-ui-bundle.js" in html and "http" not in html.replace("http-equiv", "")
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_clear_is_constant_work_the_old_generation_is_freed_afterwards(client, save, raw, vault):
    ids = [save()["id"] for _ in range(30)]
    vault.store.clear()  # the store call alone: no reclaim has run yet
    assert len([key for key in raw.keys("*") if b":r:" in key]) == 30  # nothing was walked...
    assert client.get(API).json["pagination"]["total"] == 0  # ...yet nothing is visible
    assert client.get(f"{API}/{ids[0]}").status_code == 404
    assert vault.store.reclaim(batch=7) == 30  # freed in bounded batches
    assert [key for key in raw.keys("*") if b":r:" in key or b":0" in key] == []
