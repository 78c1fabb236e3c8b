"""What a process remembers between requests must never change an answer: the owner cache
in front of PUT, the cache of parsed query strings, Flask's plain-function lookup and the
one null cookie session."""

from __future__ import annotations

import pytest

from conftest import API, JWT, future
from sessionsvc.store import TokenStore


def evalsha_calls(raw) -> int:
    return int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_refresh_of_a_record_this_process_has_seen_is_one_script_call(real_app, real_redis):
    client = real_app.test_client()
    record_id = client.post(API, json={"user_id": "u1", "token": JWT, "expires_at": future()}).json["id"]
    client.put(f"{API}/{record_id}", json={"token": JWT, "expires_at": future()})  # loads the script into Redis
    real_redis.config_resetstat()
    response = client.put(f"{API}/{record_id}", json={"token": JWT + "2", "expires_at": future(7200)})
    assert response.status_code == 200
    assert evalsha_calls(real_redis) == 1


def test_refresh_through_another_process_looks_the_owner_up_and_binds_to_it(make_app):
    writer, refresher = make_app().test_client(), make_app().test_client()
    record_id = writer.post(API, json={"user_id": "u1", "token": JWT, "expires_at": future()}).json["id"]
    response = refresher.put(f"{API}/{record_id}", json={"token": JWT + "2", "expires_at": future(7200)})
    assert response.status_code == 200 and response.json["user_id"] == "u1"
    assert writer.get(f"{API}/{record_id}").json["token"] == JWT + "2"
    assert refresher.put(f"{API}/store_999", json={"token": JWT, "expires_at": future()}).status_code == 404


def test_refresh_after_delete_is_404_even_with_the_owner_cached(client, save):
    record_id = save()["id"]
    assert client.delete(f"{API}/{record_id}").status_code == 200
    assert client.put(f"{API}/{record_id}", json={"token": JWT, "expires_at": future()}).status_code == 404


def test_a_bad_query_is_refused_every_time_and_a_good_one_answers_fresh_data(client, save):
    for _ in range(2):
        response = client.get(API, query_string={"limit": "0"})
        assert response.status_code == 422 and "limit" in response.json["errors"]["query"]
    save(user_id="a")
    assert client.get(API, query_string={"limit": "5"}).json["pagination"]["total"] == 1
    save(user_id="b")
    assert client.get(API, query_string={"limit": "5"}).json["pagination"]["total"] == 2


@pytest.mark.parametrize("backend", ["fakeredis"], indirect=True)  # the cache of one shard store
def test_owner_cache_is_bounded(vault, monkeypatch):
    monkeypatch.setattr("sessionsvc.store.ids.OWNER_CACHE_SIZE", 3)
    store: TokenStore = vault.store
    for number in range(1, 10):
        store._owners.remember(number, "u")
    assert list(store._owners) == [7, 8, 9]


def test_the_app_tells_plain_functions_from_coroutine_functions_as_flask_does(app):
    """ServiceFlask remembers which functions are plain; its answers are Flask's own."""
    from flask import Flask

    class View:
        def get(self):
            return "plain"

    async def coroutine():
        return "awaited"

    def plain():
        return "plain"

    for _ in range(2):  # the first answer worked out, the second remembered
        assert app.ensure_sync(plain) is plain
        method = View().get
        assert app.ensure_sync(method) is method
    for func in (coroutine, len):
        try:
            expected = Flask.ensure_sync(app, func)
        except RuntimeError as error:  # Flask without its async extra
            with pytest.raises(RuntimeError, match=str(error)[:20]):
                app.ensure_sync(func)
        else:
            assert app.ensure_sync(func) is expected or app.ensure_sync(func)() == expected()


def test_no_request_opens_a_cookie_session(app, client):
    """As with Flask's own interface and no SECRET_KEY: a null session that refuses writes,
    and no cookie on any answer."""
    from flask import session
    from flask.sessions import NullSession

    with app.test_request_context(API):
        assert isinstance(session._get_current_object(), NullSession) and not session
        with pytest.raises(RuntimeError, match="secret key"):
            session["user"] = "u1"
    assert "Set-Cookie" not in client.get(API).headers
