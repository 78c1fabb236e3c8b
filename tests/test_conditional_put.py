"""Conditional PUT: every record response carries the record's version as its ETag, and a
PUT with If-Match refreshes only the version the client has seen (412 otherwise), so a
client can retry a refresh without overwriting a change it has not seen. Every test runs
on fakeredis and real Redis. (Idempotent POST: test_idempotency.py.)"""

from __future__ import annotations

import pytest

from conftest import API, JWT, future


def body(**overrides) -> dict:
    return {"user_id": "usr_9a2f31", "token": JWT, "expires_at": future(3600), **overrides}


def test_every_record_response_carries_its_version_as_etag(client):
    created = client.post(API, json=body())
    url = created.headers["Location"]
    fetched = client.get(url)
    assert created.headers["ETag"] == fetched.headers["ETag"]
    refreshed = client.put(url, json={"token": JWT, "expires_at": future()})
    assert refreshed.headers["ETag"] != fetched.headers["ETag"]
    assert client.get(url).headers["ETag"] == refreshed.headers["ETag"]


def test_put_with_the_current_etag_succeeds(client):
    url = client.post(API, json=body()).headers["Location"]
    current = client.get(url).headers["ETag"]
    response = client.put(url, json={"token": JWT + "2", "expires_at": future()}, headers={"If-Match": current})
    assert response.status_code == 200


def test_put_with_a_stale_etag_is_412_and_changes_nothing(client):
    url = client.post(API, json=body()).headers["Location"]
    stale = client.get(url).headers["ETag"]
    winner = client.put(url, json={"token": JWT + "A", "expires_at": future()}, headers={"If-Match": stale})
    loser = client.put(url, json={"token": JWT + "B", "expires_at": future()}, headers={"If-Match": stale})
    assert winner.status_code == 200
    assert loser.status_code == 412 and loser.json["code"] == 412 and loser.json["message"]
    assert loser.headers["ETag"] == winner.headers["ETag"]
    assert client.get(url).json["token"] == JWT + "A"


@pytest.mark.parametrize("header, status", [("*", 200), ('"999999", {current}', 200), ('W/{current}', 412),
                                            ("garbage", 412), ('"998", "999"', 412),
                                            ('""', 412), ('"", {current}', 200)])  # werkzeug: "" parses as None
def test_if_match_lists_star_and_weak_tags(client, header, status):
    url = client.post(API, json=body()).headers["Location"]
    current = client.get(url).headers["ETag"]
    response = client.put(url, json={"token": JWT, "expires_at": future()},
                          headers={"If-Match": header.format(current=current)})
    assert response.status_code == status


def test_put_without_if_match_still_works(client):
    url = client.post(API, json=body()).headers["Location"]
    assert client.put(url, json={"token": JWT, "expires_at": future()}).status_code == 200


def test_if_match_on_an_unknown_record_is_404(client):
    response = client.put(f"{API}/store_404", json={"token": JWT, "expires_at": future()}, headers={"If-Match": '"1"'})
    assert response.status_code == 404
