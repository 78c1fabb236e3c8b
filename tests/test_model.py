"""A hypothesis state machine drives the API against a plain Python model of the store and
checks every invariant after every step, on fakeredis and on real Redis."""

from __future__ import annotations

import calendar
import itertools
import time
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import API, iso
from invariants import index_problems

USERS = ("alice", "bob", "carol")
users = st.sampled_from(USERS)
maybe_user = st.none() | users
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
lifetimes = st.integers(min_value=120, max_value=30 * 86400)


@dataclass
class Held:
    user_id: str
    token: str
    expires_at: int
    saved: int  # position in the true order of saves
    etag: str


class StoreModel(RuleBasedStateMachine):
    """The model: a dict of held records and the order they were saved in."""

    def __init__(self, app_factory, raw):
        super().__init__()
        self.prefix = "model" + uuid.uuid4().hex[:8]
        self.client = app_factory(key_prefix=self.prefix).test_client()
        self.raw = raw
        self.held: dict[str, Held] = {}
        self.ever: list[str] = []  # every id the service ever gave out
        self.saves = itertools.count()
        self.idempotent: dict[str, tuple[dict, dict]] = {}  # key -> (request, first answer)

    # --- helpers ---------------------------------------------------------------------

    def newest_first(self, user_id: str | None) -> list[str]:
        chosen = [(held.saved, record_id) for record_id, held in self.held.items()
                  if user_id is None or held.user_id == user_id]
        return [record_id for _, record_id in sorted(chosen, reverse=True)]

    def known_id(self, data) -> str:
        return data.draw(st.sampled_from([*self.ever, "store_999999"]))

    def expect_summary(self, body: dict, record_id: str) -> None:
        held = self.held[record_id]
        assert body["id"] == record_id and body["user_id"] == held.user_id
        assert body["expires_at"] == iso(held.expires_at) and body["is_valid"] is True
        assert held.token not in str(body) or len(held.token) < 12  # a short token can hide in a preview

    # --- rules -----------------------------------------------------------------------

    @rule(user_id=users, token=tokens, lifetime=lifetimes)
    def save(self, user_id, token, lifetime):
        expires_at = int(time.time()) + lifetime
        response = self.client.post(API, json={"user_id": user_id, "token": token, "expires_at": iso(expires_at)})
        assert response.status_code == 201, response.json
        record_id = response.json["id"]
        assert record_id not in self.ever, "an id was reused"
        self.ever.append(record_id)
        self.held[record_id] = Held(user_id, token, expires_at, next(self.saves), response.headers["ETag"])
        self.expect_summary(response.json, record_id)

    @rule(key=st.sampled_from(["k1", "k2"]), user_id=users, token=tokens, same=st.booleans())
    def save_idempotently(self, key, user_id, token, same):
        if same and key in self.idempotent:
            request = self.idempotent[key][0]
        else:
            request = {"user_id": user_id, "token": token, "expires_at": iso(int(time.time()) + 3600)}
        response = self.client.post(API, json=request, headers={"Idempotency-Key": key})
        if key not in self.idempotent:
            assert response.status_code == 201
            record_id = response.json["id"]
            self.ever.append(record_id)
            self.held[record_id] = Held(request["user_id"], request["token"], _epoch(request["expires_at"]),
                                        next(self.saves), response.headers["ETag"])
            self.idempotent[key] = (request, response.json)
        elif request == self.idempotent[key][0]:
            assert response.status_code == 201 and response.json == self.idempotent[key][1]
            assert response.headers["Idempotent-Replayed"] == "true"
        else:
            assert response.status_code == 422

    @precondition(lambda self: self.ever)
    @rule(data=st.data(), token=tokens, lifetime=lifetimes, stale=st.booleans())
    def refresh(self, data, token, lifetime, stale):
        record_id = self.known_id(data)
        expires_at = int(time.time()) + lifetime
        headers = {"If-Match": '"0"'} if stale else {}
        response = self.client.put(f"{API}/{record_id}", json={"token": token, "expires_at": iso(expires_at)},
                                   headers=headers)
        if record_id not in self.held:
            assert response.status_code == 404
        elif stale:
            assert response.status_code == 412
            assert response.headers["ETag"] == self.held[record_id].etag
        else:
            assert response.status_code == 200
            held = self.held[record_id]
            held.token, held.expires_at, held.saved = token, expires_at, next(self.saves)
            held.etag = response.headers["ETag"]
            self.expect_summary(response.json, record_id)

    @precondition(lambda self: self.ever)
    @rule(data=st.data())
    def get(self, data):
        record_id = self.known_id(data)
        response = self.client.get(f"{API}/{record_id}")
        if record_id not in self.held:
            assert response.status_code == 404
            return
        held = self.held[record_id]
        assert response.status_code == 200
        assert response.json["token"] == held.token and response.json["user_id"] == held.user_id
        assert response.headers["ETag"] == held.etag

    @precondition(lambda self: self.ever)
    @rule(data=st.data())
    def delete(self, data):
        record_id = self.known_id(data)
        response = self.client.delete(f"{API}/{record_id}")
        if record_id in self.held:
            assert response.status_code == 200 and response.json == {"deleted": True, "id": record_id}
            del self.held[record_id]
        else:
            assert response.status_code == 404

    @rule(user_id=maybe_user)
    def delete_all(self, user_id):
        response = self.client.delete(API, query_string={"user_id": user_id} if user_id else {})
        cleared = self.newest_first(user_id)
        assert response.status_code == 200 and response.json["count"] == len(cleared)
        for record_id in cleared:
            del self.held[record_id]

    @rule(user_id=maybe_user, page=st.integers(1, 4), limit=st.integers(1, 5))
    def list(self, user_id, page, limit):
        query = {"page": page, "limit": limit, **({"user_id": user_id} if user_id else {})}
        body = self.client.get(API, query_string=query).json
        expected = self.newest_first(user_id)
        assert body["pagination"] == {"page": page, "limit": limit, "total": len(expected)}
        assert [row["id"] for row in body["data"]] == expected[(page - 1) * limit : page * limit]
        for row in body["data"]:
            self.expect_summary(row, row["id"])

    @rule(user_id=maybe_user)
    def current(self, user_id):
        response = self.client.get(f"{API}/current", query_string={"user_id": user_id} if user_id else {})
        expected = self.newest_first(user_id)
        if not expected:
            assert response.status_code == 404
            return
        held = self.held[expected[0]]
        assert response.status_code == 200
        assert response.json == {"token": held.token, "expires_at": iso(held.expires_at), "is_valid": True}

    @rule(user_id=maybe_user)
    def validity(self, user_id):
        before = time.time()
        body = self.client.get(f"{API}/validity", query_string={"user_id": user_id} if user_id else {}).json
        after = time.time()
        expected = self.newest_first(user_id)
        if not expected:
            assert body == {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
            return
        held = self.held[expected[0]]
        assert body["is_valid"] is True and body["expires_at"] == iso(held.expires_at)
        # Redis's clock is read in whole milliseconds, so `before` may be up to 1 ms later.
        assert held.expires_at - after - 1 <= body["seconds_remaining"] <= held.expires_at - before + 0.001

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def indexes_agree_with_records(self):
        assert index_problems(self.raw, self.prefix) == []

    @invariant()
    def total_matches_the_model(self):
        assert self.client.get(API).json["pagination"]["total"] == len(self.held)


def _epoch(timestamp: str) -> int:
    return calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def test_the_store_behaves_like_its_model(make_app, raw):
    run_state_machine_as_test(
        lambda: StoreModel(make_app, raw),
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
