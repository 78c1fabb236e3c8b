"""Taking turns under gevent (sessionsvc/turns.py): a request starts only once the worker's
other ready greenlets have run, so no connection holds a worker. The same property through
a real gunicorn gevent worker: test_service.py, 200 pipelined requests on one connection."""

from __future__ import annotations

import gevent
import gevent.socket

from sessionsvc import turns
from sessionsvc.turns import FairTurns


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


def test_a_request_starts_only_after_a_connection_with_input_waiting_has_been_served():
    """The other connection's greenlet waits on its socket: it can run only once the event
    loop has polled for I/O. A yield that runs queued callbacks and no poll
    (``gevent.sleep(0)``) lets the busy connection serve dozens of requests first."""
    app, ran = FairTurns(answer), []
    incoming, client = gevent.socket.socketpair()

    def other_connection():
        incoming.recv(1)
        ran.append("other connection")

    def busy_connection():
        client.sendall(b"x")  # the other connection's request is in its socket
        for _ in range(100):
            app({}, None)
            ran.append("request")

    with incoming, client:
        waiting = gevent.spawn(other_connection)
        gevent.sleep(0.01)  # it waits on its socket
        gevent.spawn(busy_connection).join()
        waiting.join(timeout=5)
    assert ran.index("other connection") == 0, f"{ran.index('other connection')} requests were served first"


def test_a_request_whose_greenlet_waited_on_redis_since_its_previous_one_starts_at_once(monkeypatch):
    """A wait on a Redis reply took the greenlet through the event loop: a turn before its
    next request would only send that request behind every other connection's work."""
    monkeypatch.setattr(turns, "gevent_patched", lambda: True)
    app, ran = FairTurns(answer), []
    redis_call_observed = turns.observing_waits(lambda operation, seconds, kind: None)

    def connection():
        app({}, None)
        redis_call_observed("get", 0.001, None)
        gevent.spawn(ran.append, "other connection")
        app({}, None)
        ran.append("next request")
        app({}, None)  # that one waited on nothing: this one takes its turn
        ran.append("third request")

    gevent.spawn(connection).join()
    assert ran == ["next request", "other connection", "third request"]
