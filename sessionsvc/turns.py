"""Taking turns under gevent: no keep-alive connection holds a worker.

A gevent worker serves each connection in one greenlet, which runs until it waits on
I/O. When a client's next request is already in its socket and serving it waits on
nothing (a health check, a 404, a 422), that greenlet would serve request after request
while the worker's other connections wait. So every request starts with
``gevent.idle()``: the greenlet waits until the event loop has polled for I/O and has
nothing else ready to run. Requests that arrived meanwhile on other connections, and Redis
replies that came back, are served first.

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
    """WSGI middleware: before a request is handled, every other greenlet of the worker
    that is ready to run (another connection's request, a Redis reply) runs first."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]):
        from gevent import idle

        self.wsgi_app = wsgi_app
        self.wait_for_the_others = idle

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.wait_for_the_others()
        return self.wsgi_app(environ, start_response)


def install(app) -> None:
    """Wrap the app in `FairTurns` when running under gevent."""
    if gevent_patched():
        app.wsgi_app = FairTurns(app.wsgi_app)
