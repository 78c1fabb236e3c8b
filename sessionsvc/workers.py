"""gunicorn's worker classes, answering the requests gunicorn refuses itself in the service's
JSON error shape.

A request line or headers over gunicorn's limits, or bytes that are not HTTP, never reach
the app: gunicorn answers them from ``Worker.handle_error`` with an HTML page and none of
the headers every other response carries, which a client generated from the OpenAPI
document cannot parse. Here ``handle_error`` keeps gunicorn's choice of status and its
logging, and writes ``{code, status, message}`` with the usual headers instead.

Imported by gunicorn's master (``gunicorn.conf.py`` names these classes): nothing here may
import redis or the app at import time, since a gevent worker must patch sockets first.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker as GunicornGeventWorker
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

# What SESSIONSVC_WORKER_CLASS may name; any other value is handed to gunicorn unchanged.
SHORT_NAMES = {"gevent": "GeventWorker", "gthread": "ThreadWorker", "sync": "SyncWorker"}


def worker_class(name: str, threads: int) -> str:
    """The class gunicorn should load for SESSIONSVC_WORKER_CLASS ``name``. gunicorn runs a
    sync worker with more than one thread as its own gthread class; so does this, with
    the service's."""
    if name == "sync" and threads > 1:
        name = "gthread"
    return f"{__name__}.{SHORT_NAMES[name]}" if name in SHORT_NAMES else name


class ErrorPageCatcher:
    """Stands in for the client's socket while gunicorn's own ``handle_error`` runs: it
    keeps the status line of the HTML page gunicorn writes, and the page goes nowhere."""

    def __init__(self) -> None:
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: gunicorn then simply calls sendall

    def sendall(self, data: bytes) -> None:
        self.written += data

    def status(self) -> int:
        """The status gunicorn chose (500 if it wrote nothing)."""
        _, _, rest = self.written.partition(b" ")
        code = rest[:3]
        return int(code) if code.isdigit() else 500


class JsonErrors:
    """Mixin for a gunicorn worker class: its own error answers in the service's shape.

    The message is the service's own text for the status, never gunicorn's: that quotes
    the request line or a header, which may hold a token."""

    def handle_error(self, req, client, addr, exc) -> None:
        catcher = ErrorPageCatcher()
        super().handle_error(req, catcher, addr, exc)  # gunicorn's status, logs and access line
        try:
            util.write_nonblock(client, self.json_error(catcher.status()))
        except Exception:  # the client may be gone; gunicorn gives up the same way
            self.log.debug("Failed to send error message.")

    def json_error(self, status: int) -> bytes:
        """A whole HTTP/1.1 response: the JSON error for ``status``, closing the connection."""
        # Imported here, in the worker, once it is serving (the app has imported them).
        from .edge import API_HEADERS, request_id_of
        from .errors import MESSAGES, error_body
        from .jsonprovider import MIMETYPE, response_body

        cfg = self.cfg
        messages = {
            400: "The request is not valid HTTP/1.1.",
            414: f"The request line (method, path and query) is over {cfg.limit_request_line} bytes.",
            431: f"The request headers are over the limit: at most {cfg.limit_request_fields} fields "
            f"of at most {cfg.limit_request_field_size} bytes each.",
        }
        payload = error_body(status, messages.get(status) or MESSAGES.get(status, "The request was refused."))
        body = response_body(payload)
        fixed_headers, _ = API_HEADERS
        headers = [
            ("Content-Type", MIMETYPE),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            ("X-Request-ID", request_id_of({})),  # a fresh id: the request's own was never read
            *fixed_headers,
        ]
        head = f"HTTP/1.1 {status} {payload['status']}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
        return (head + "\r\n").encode("latin-1") + body


class GeventWorker(JsonErrors, GunicornGeventWorker):
    """gunicorn's gevent worker (the service's default)."""


class ThreadWorker(JsonErrors, GunicornThreadWorker):
    """gunicorn's gthread worker."""


class SyncWorker(JsonErrors, GunicornSyncWorker):
    """gunicorn's sync worker."""
