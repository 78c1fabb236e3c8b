"""Taking turns under gevent (sessionsvc/turns.py) and the Redis readiness check that gives
one (sessionsvc/store/client.py): a greenlet lets the others run, and a pooled connection
with something left to read is still never used as it is."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import pytest
import redis

from conftest import NO_REDIS_REASON, REDIS_SERVER, redis_url
from redis_server import wait_until
from sessionsvc.store.client import ReadinessCheckingParser, connect
from sessionsvc.turns import FairTurns

ROOT = Path(__file__).resolve().parent.parent


def answer(environ, start_response):
    return [b"ok"]


def test_back_to_back_requests_on_one_greenlet_let_a_ready_greenlet_run_in_between():
    """Its next request already there and nothing to wait on: without the turn the
    greenlet would serve it before anything else in the worker ran."""
    app, ran = FairTurns(answer), []

    def connection():
        app({}, None)
        gevent.spawn(ran.append, "other connection")
        app({}, None)
        ran.append("second request")

    gevent.spawn(connection).join()
    assert ran == ["other connection", "second request"]


def test_a_greenlet_that_waited_since_its_previous_request_takes_no_extra_turn():
    app, ran = FairTurns(answer), []

    def connection():
        app({}, None)
        gevent.sleep(0.001)  # waited (on Redis, say): the loop has turned meanwhile
        gevent.spawn(ran.append, "other connection")
        app({}, None)
        ran.append("second request")

    gevent.spawn(connection).join()
    assert ran == ["second request", "other connection"]


def readiness(connection) -> bool | str:
    try:
        return connection.can_read()
    except redis.ConnectionError:
        return "closed"


@pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS_REASON)
def test_the_readiness_check_answers_as_redis_py_does(real_redis):
    """Nothing to read, a reply left unread, the server gone: the same answer as redis-py's
    own parser gives, case by case."""
    url = redis_url(real_redis)
    ours = connect(url)[0].connection_pool.get_connection()
    stock = redis.Redis.from_url(url).connection_pool.get_connection()
    assert isinstance(ours._parser, ReadinessCheckingParser)
    assert readiness(ours) is readiness(stock) is False

    for connection in (ours, stock):
        connection.send_command("PING")  # its reply is never read
        poller = select.poll()
        poller.register(connection._sock, select.POLLIN)
        assert poller.poll(2000), "Redis did not answer the PING"
    assert readiness(ours) is readiness(stock) is True

    for connection in (ours, stock):
        connection.read_response()
        connection.send_command("CLIENT", "ID")
        real_redis.client_kill_filter(_id=connection.read_response())
    wait_until(lambda: readiness(ours) == readiness(stock) == "closed", timeout=5, what="both to see the close")


@pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS_REASON)
def test_under_gevent_the_readiness_check_asks_the_os_and_lets_ready_greenlets_run(real_redis):
    """Run in a process of its own: gevent's monkey-patching cannot be undone."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from sessionsvc.store.client import connect

        client, _ = connect({redis_url(real_redis)!r})
        client.ping()
        connection = client.connection_pool.get_connection()
        parser = connection._parser
        assert parser._os_poll is monkey.get_original("select", "poll"), parser._os_poll
        ran = []
        gevent.spawn(ran.append, "other connection")
        assert connection.can_read() is False
        assert ran == ["other connection"], ran
        print("checked")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == "checked", result.stderr[-2000:]
