"""Taking turns under gevent: no keep-alive connection holds a worker.

A gevent worker serves each connection in one greenlet, which runs until it waits on
I/O. When a client's next request is already in its socket and serving it waits on
nothing (a health check, a 404, a 422), that greenlet would serve request after request
while the worker's other connections wait. So a request whose greenlet has not waited on
I/O since its previous request starts with ``gevent.idle()``: the greenlet waits until the
event loop has polled for I/O and has nothing else ready to run. Requests that arrived
meanwhile on other connections, and Redis replies that came back, are served first.

A greenlet that waited on a Redis reply during its previous request has been through the
event loop already: it starts its next request at once. (A turn on every request would
send each one to the back of the worker's queue, behind every other connection's work,
and lengthen the latency tail.) The store's observer, called after each Redis call,
notes the wait (``observing_waits``); a greenlet-local flag (``gevent.local``) carries it
to the next request.

``gevent.sleep(0)`` would be the lighter yield, but it runs the callbacks already queued
without polling for I/O: a connection whose requests never wait would still be served
for about gevent's switch interval at a time before another connection's request is
even seen.

Under sync and gthread workers (and in tests that do not patch) nothing is installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (gunicorn's gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


class FairTurns:
    """WSGI middleware: before a request is handled, unless its greenlet waited on I/O
    since its previous request, every other greenlet of the worker that is ready to run
    (another connection's request, a Redis reply) runs first."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]):
        from gevent import idle

        self.wsgi_app = wsgi_app
        self.wait_for_the_others = idle
        self.greenlets = _greenlet_state()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        state = self.greenlets
        if not getattr(state, "waited", False):
            self.wait_for_the_others()
        state.waited = False
        return self.wsgi_app(environ, start_response)


_state: Any = None


def _greenlet_state() -> Any:
    """The flag per greenlet that a wait on I/O happened (one ``gevent.local.local``)."""
    global _state
    if _state is None:
        from gevent.local import local

        _state = local()
    return _state


def observing_waits(observe: Callable[..., None]) -> Callable[..., None]:
    """The store's observer (called after every Redis call), also noting under gevent that
    the calling greenlet waited on I/O: its next request needs no turn."""
    if not gevent_patched():
        return observe
    state = _greenlet_state()

    def observed(*args: Any) -> None:
        state.waited = True
        observe(*args)

    return observed


def install(app) -> None:
    """Wrap the app in `FairTurns` when running under gevent."""
    if gevent_patched():
        app.wsgi_app = FairTurns(app.wsgi_app)
