"""Taking turns under gevent (sessionsvc/turns.py): a greenlet lets the others run."""

from __future__ import annotations

import gevent

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
