"""Taking turns under gevent: no keep-alive connection holds a worker.

A gevent worker serves each connection in one greenlet, which runs until it waits on
I/O. When a client's next request is already in its socket and serving it waits on
nothing, that greenlet serves request after request while the worker's other connections
wait (16 keep-alive clients on /healthz: p99 0.3-0.5 s against a p50 of 0.4 ms,
docs/benchmarks.md). Each Redis command gives the loop a turn through redis-py's
readiness check (gevent's ``select.poll``), and ``FairTurns`` gives one to each request
that waited on nothing since the greenlet's previous one: health checks, 404s, 422s.

A turn is one pass of the loop: I/O polled, ready greenlets run, then this one resumes.
Without gevent (sync and gthread workers, tests) nothing here does anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (gunicorn's gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def make_turn_taker() -> Callable[[], None]:
    """A function that lets the event loop make one pass before the calling greenlet goes
    on: a timer due at once (not ``gevent.sleep``: its zero runs no I/O, and any positive
    time lets libev's epoll wait up to a millisecond). gevent is looked up here, once, not
    on every turn."""
    from gevent import get_hub

    def take_turn() -> None:
        hub = get_hub()
        with hub.loop.timer(0) as timer:
            hub.wait(timer)

    return take_turn


class FairTurns:
    """Before a request, a turn of the loop unless the greenlet serving it has been
    through the loop since its previous request (it waited on Redis, say), which most
    have: then the request costs two attribute reads and no switch."""

    def __init__(self, wsgi_app):
        from gevent import get_hub, getcurrent

        self.wsgi_app = wsgi_app
        self._get_hub, self._getcurrent = get_hub, getcurrent
        self._take_turn = make_turn_taker()

    def __call__(self, environ, start_response):
        current, loop = self._getcurrent(), self._get_hub().loop
        # libev counts the loop's passes; where the loop does not (libuv), always turn.
        passes = getattr(loop, "iteration", None)
        if passes is None or getattr(current, "sessionsvc_loop_pass", None) == passes:
            self._take_turn()
            passes = getattr(loop, "iteration", None)
        current.sessionsvc_loop_pass = passes
        return self.wsgi_app(environ, start_response)


def install(app) -> None:
    """Wrap the app in `FairTurns` when running under gevent."""
    if gevent_patched():
        app.wsgi_app = FairTurns(app.wsgi_app)
