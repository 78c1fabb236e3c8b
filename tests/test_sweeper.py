"""Expiry events: told within seconds of expires_at with no other traffic, exactly once per
expiry whoever sweeps, never for a record refreshed or deleted first, by a sweeper that one
process at a time runs under a lease in Redis. Real seconds pass here (Redis's clock)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from conftest import API, JWT, TEST_KEYS, future, iso, redis_url
from events_check import disagreements, stream
from redis_server import RedisServer, wait_until
from servers import Gunicorn
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.store import StoreUnavailable
from sessionsvc.sweeper import ExpirySweeper


def save(client, user: str, expires_at: int) -> str:
    response = client.post(API, json={"user_id": user, "token": JWT, "expires_at": iso(expires_at)})
    assert response.status_code == 201, response.json
    return response.json["id"]


def expired(raw) -> list[dict[str, str]]:
    return [event for event in stream(raw) if event["type"] == "expired"]


def wait_for(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def test_an_expiry_is_told_within_seconds_with_no_other_traffic(make_app, raw):
    client = make_app(expiry_sweep=True).test_client()
    expires = int(time.time()) + 2
    record_id = save(client, "ann", expires)
    # From here on nobody asks the service anything; only the stream is watched.
    told = wait_until(lambda: expired(raw), timeout=expires - time.time() + 8, what="an expired event")
    assert [(event["n"], event["u"], event["e"]) for event in told] == [(record_id[6:].lstrip("0"), "ann",
                                                                         str(expires))]
    (cursor,) = [entry_id for entry_id, fields in raw.xrange("{sessionsvc}:events") if fields[b"type"] == b"expired"]
    told_at = int(cursor.split(b"-")[0]) / 1000
    assert expires <= told_at <= expires + 5
    event = client.get(f"{API}/events", query_string={"type": "expired"}).json["data"][0]
    assert (event["id"], event["user_id"], event["expires_at"]) == (record_id, "ann", iso(expires))
    assert disagreements(raw) == []


def test_no_expiry_is_told_for_a_record_refreshed_or_deleted_before_it_expired(make_app, raw):
    app = make_app()
    client = app.test_client()
    expires = int(time.time()) + 2
    refreshed, deleted, control = (save(client, user, expires) for user in ("ann", "bob", "cat"))
    client.put(f"{API}/{refreshed}", json={"token": JWT, "expires_at": future(3600)})
    client.delete(f"{API}/{deleted}")
    wait_for(expires + 0.2)
    ExpirySweeper(app.extensions["sessionsvc"].store).sweep()
    assert [event["u"] for event in expired(raw)] == ["cat"]
    assert control[6:].lstrip("0") == expired(raw)[0]["n"]
    assert disagreements(raw) == []


def test_an_expiry_is_told_once_not_again_when_retention_ends_and_anew_after_a_refresh(make_app, raw):
    app = make_app(retention_seconds=2)
    client = app.test_client()
    sweeper = ExpirySweeper(app.extensions["sessionsvc"].store)
    expires = int(time.time()) + 1
    kept, dropped = save(client, "ann", expires), save(client, "bob", expires)
    wait_for(expires + 0.2)
    assert sweeper.sweep() == 2
    assert sweeper.sweep() == 0
    # Expired but held (retention): a refresh gives it a new expiry, told when it comes.
    later = int(time.time()) + 2
    assert client.put(f"{API}/{kept}", json={"token": JWT, "expires_at": iso(later)}).status_code == 200
    wait_for(expires + 2 + 0.3)  # retention over for the other one
    assert client.get(f"{API}/{dropped}").status_code == 404
    client.get(API)  # prunes it
    wait_for(later + 0.2)
    assert sweeper.sweep() == 1
    told = [(event["u"], int(event["e"])) for event in expired(raw)]
    assert told == [("ann", expires), ("bob", expires), ("ann", later)] or told == [
        ("bob", expires), ("ann", expires), ("ann", later)]


def test_a_write_tells_the_expiries_that_came_before_it(make_app, raw):
    """Without any sweeper at all, an expiry is told before the next change of the store,
    so the stream never tells a change before an expiry that came first."""
    client = make_app().test_client()
    expires = int(time.time()) + 1
    record_id = save(client, "ann", expires)
    wait_for(expires + 0.2)
    client.put(f"{API}/{record_id}", json={"token": JWT, "expires_at": future()})
    assert [event["type"] for event in stream(raw)] == ["created", "expired", "refreshed"]


def test_only_the_lease_holder_sweeps_and_another_takes_over_when_it_stops(make_app, raw):
    store = make_app().extensions["sessionsvc"].store
    first, second = ExpirySweeper(store, lease_ms=400), ExpirySweeper(store, lease_ms=400)
    assert first.sweep() == 0
    assert second.sweep() is None
    assert first.sweep() == 0  # renewed
    first.stop(release=False)  # as if its process died
    assert second.sweep() is None
    time.sleep(0.5)
    assert second.sweep() == 0
    assert first.sweep() is None
    second.stop()  # a clean stop hands the lease over at once
    assert first.sweep() == 0


def test_many_sweepers_and_writers_tell_each_expiry_exactly_once(real_redis):
    """Three app instances, each with its sweeper thread, on one Redis, while writes (which
    tell expiries too) go on."""
    apps = [create_app(Config(encryption_keys=TEST_KEYS, redis_url=redis_url(real_redis))) for _ in range(3)]
    for app in apps:
        app.extensions["sessionsvc.sweeper"].lease_ms = 300  # hand over often: more racing
    clients = [app.test_client() for app in apps]
    expires = int(time.time()) + 2
    for index in range(60):
        save(clients[index % 3], f"user{index % 7}", expires + index % 2)
    stop = threading.Event()

    def write(client) -> None:
        while not stop.is_set():
            save(client, "writer", int(time.time()) + 3600)

    writers = [threading.Thread(target=write, args=(client,)) for client in clients[:2]]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: len(expired(real_redis)) >= 60, timeout=15, what="60 expired events")
        time.sleep(1.5)
    finally:
        stop.set()
        for writer in writers:
            writer.join(10)
    told = [(event["n"], event["e"]) for event in expired(real_redis)]
    assert len(told) == len(set(told)) == 60
    assert disagreements(real_redis) == []


def test_expiries_are_told_exactly_once_by_gunicorn_workers_and_another_host(real_redis, tmp_path):
    """Real processes: two gunicorn workers and an app in this process, all sweeping."""
    url = redis_url(real_redis)
    server = Gunicorn(tmp_path / "gunicorn.log", workers=2, SESSIONSVC_REDIS_URL=url).start()
    try:
        local = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url))
        expires = int(time.time()) + 2
        for index in range(30):
            status, _, _ = server.request("POST", API, {"user_id": f"u{index % 4}", "token": JWT,
                                                        "expires_at": iso(expires)})
            assert status == 201
        wait_until(lambda: len(expired(real_redis)) >= 30, timeout=15, what="30 expired events")
        time.sleep(2)
        told = [(event["n"], event["e"]) for event in expired(real_redis)]
        assert len(told) == len(set(told)) == 30
        cursors = [int(entry_id.split(b"-")[0]) for entry_id, fields in real_redis.xrange("{sessionsvc}:events")
                   if fields[b"type"] == b"expired"]
        assert max(cursors) / 1000 <= expires + 5
        assert local.extensions["sessionsvc.sweeper"].failing is None
    finally:
        log = server.stop()
    assert "Traceback" not in log


def test_a_sweeper_survives_a_redis_outage_and_sweeps_again_after_it(tmp_path, caplog):
    node = RedisServer(tmp_path / "redis", "--appendonly", "yes").start()
    try:
        app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=node.url, expiry_sweep=False,
                                redis_timeout_seconds=0.3))
        client = app.test_client()
        sweeper = ExpirySweeper(app.extensions["sessionsvc"].store)
        expires = int(time.time()) + 1
        save(client, "ann", expires)
        node.stop()
        with caplog.at_level(logging.WARNING, logger="sessionsvc"):
            with pytest.raises(StoreUnavailable):
                sweeper.sweep()
            sweeper.tick()
            sweeper.tick()
        failing = [record for record in caplog.records if record.getMessage().startswith("expiry sweep failing")]
        assert len(failing) == 1  # once per outage, not once per tick
        node.start()
        wait_for(expires + 0.2)
        sweeper.tick()
        assert sweeper.failing is None
        assert [event["u"] for event in expired(node.client())] == ["ann"]
    finally:
        node.stop()


def test_check_index_finds_records_not_due_and_repair_makes_their_expiry_told(make_app, raw):
    """A store written before expiries were told has no `due` index: check-index says so,
    and --repair puts each record whose expiry is still to come in it."""
    app = make_app()
    client = app.test_client()
    expires = int(time.time()) + 2
    record_id = save(client, "ann", expires)
    raw.delete("{sessionsvc}:due:0")
    runner = app.test_cli_runner()
    checked = runner.invoke(args=["check-index"])
    assert checked.exit_code != 0 and "records missing from an index: 1" in checked.output
    assert runner.invoke(args=["check-index", "--repair"]).exit_code == 0
    assert raw.zscore("{sessionsvc}:due:0", f"{record_id[6:].lstrip('0')}:ann") == expires * 1000
    wait_for(expires + 0.2)
    ExpirySweeper(app.extensions["sessionsvc"].store).sweep()
    assert [event["u"] for event in expired(raw)] == ["ann"]
