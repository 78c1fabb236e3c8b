"""Log lines: JSON (python-json-logger) for log shippers, plain text at a developer's terminal.

One configuration, `logging_config`, serves the app and gunicorn alike: `gunicorn.conf.py`
hands it to gunicorn as `logconfig_dict`, and `create_app` applies the app's part when
nothing else configured logging (the `flask` CLI, tests, other servers).

- App lines (logger ``sessionsvc``) carry the request id, method and route template of
  the request they belong to.
- gunicorn's access lines carry the request id, method, route template, path, status,
  duration and size, taken from gunicorn's atoms: the ``X-Request-ID`` response header and
  the route the app leaves in the WSGI environ (``sessionsvc.route``).

Nothing here reads a query string, a body or an ``Authorization`` header, so no token can
reach a log line through it.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, has_request_context, request
from pythonjsonlogger.orjson import OrjsonFormatter

from .config import Config

ROUTE_ENVIRON_KEY = "sessionsvc.route"
REQUEST_ID_ENVIRON_KEY = "sessionsvc.request_id"  # set by sessionsvc.edge, first thing
UNMATCHED_ROUTE = "<unmatched>"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger"}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REQUEST_FIELDS = ("request_id", "method", "route")
EXTRA_LAYOUTS_CACHED = 256


CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


@functools.lru_cache(maxsize=256)
def _template(rule: str) -> str:
    return CONVERTER.sub(r"<\1>", rule)


def route_template() -> str:
    """The matched URL rule (``/api/v1/session-storage/<record_id>``, converters left
    out), never the raw path: what log lines and metrics name a request by. Worked out
    once per request and kept in the environ, where gunicorn's access line reads it."""
    current = request._get_current_object()  # type: ignore[attr-defined]
    environ = current.environ
    route = environ.get(ROUTE_ENVIRON_KEY)
    if route is None:
        rule = current.url_rule
        route = environ[ROUTE_ENVIRON_KEY] = _template(rule.rule) if rule is not None else UNMATCHED_ROUTE
    return route


def request_id() -> str | None:
    """The current request's id (see ``sessionsvc.edge.request_id_of``)."""
    return request.environ.get(REQUEST_ID_ENVIRON_KEY)


def human_readable(config: Config, stream: Any = None) -> bool:
    """Plain text when asked for, or in development when a person watches the terminal."""
    if config.log_format != "auto":
        return config.log_format == "text"
    stream = sys.stderr if stream is None else stream
    return not config.production and stream.isatty()


class RequestContext(logging.Filter):
    """Adds the current request's id, method and route template to app log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            current = request._get_current_object()  # type: ignore[attr-defined]
            record.request_id = current.environ.get(REQUEST_ID_ENVIRON_KEY)
            record.method = current.method
            record.route = route_template()
        return True


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: time, level, logger, message, then any extra fields
    (serialised by orjson: the audit line is written on every reveal, a hot path)."""

    def __init__(self, **kwargs: Any):
        super().__init__(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp="time", **kwargs)
        self._direct = not (self.defaults or self.static_fields or self.prefix or self.rename_fields_keep_missing)
        # A record's extra fields follow from its attribute names, which repeat per call
        # site: worked out once per layout rather than by a pass over ~30 attributes.
        self._extra_names: dict[tuple[str, ...], tuple[str, ...]] = {}

    def direct(self, record: logging.LogRecord) -> bool:
        """Whether the record is a plain line (a text message, no exception or stack),
        which `format` builds directly rather than through python-json-logger's general path."""
        return self._direct and not (
            isinstance(record.msg, dict) or record.exc_info or record.exc_text or record.stack_info
        )

    def add_extra_fields(self, log_data: dict[str, Any], record: logging.LogRecord) -> None:
        """The record's extra fields, in its attributes' order."""
        attributes = record.__dict__
        layout = tuple(attributes)
        extra_names = self._extra_names.get(layout)
        if extra_names is None:
            if len(self._extra_names) >= EXTRA_LAYOUTS_CACHED:
                self._extra_names.clear()
            skip = self._skip_fields
            extra_names = tuple(name for name in layout if name not in skip and not name.startswith("_"))
            self._extra_names[layout] = extra_names
        for name in extra_names:
            log_data[name] = attributes[name]

    def format(self, record: logging.LogRecord) -> str:
        """A plain line built directly: the same fields in the same order as
        python-json-logger's general path, which the rest still takes (tests/test_ops.py
        compares the two)."""
        if not self.direct(record):
            return super().format(record)
        record.message = message = record.getMessage()
        log_data: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": message}
        self.add_extra_fields(log_data, record)
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC)
        return self.jsonify_log_record(log_data)


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access line as JSON fields, picked from its atoms (never ``r``, ``q`` or
    request headers, which could hold a query string or credentials)."""

    def format(self, record: logging.LogRecord) -> str:
        """A plain line built directly, as `JsonFormatter.format` does, from the atoms
        alone: the text message (gunicorn's ``access_log_format``) is not worked out, since
        the JSON line's message is its own. The same line as the general path (through
        `add_fields` below), which the rest still takes (tests/test_ops.py compares them)."""
        if not self.direct(record):
            return OrjsonFormatter.format(self, record)
        log_data: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": None}
        self.add_extra_fields(log_data, record)
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC)
        self.add_access_fields(log_data, record)
        return self.jsonify_log_record(log_data)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        self.add_access_fields(log_data, record)

    @staticmethod
    def add_access_fields(log_data: dict[str, Any], record: logging.LogRecord) -> None:
        atoms = record.args if isinstance(record.args, Mapping) else {}

        def atom(name: str) -> Any:
            value = atoms.get(name)
            return None if value in ("-", None) else value

        status = atom("s")
        duration_us = atom("D")
        fields = {
            "request_id": atom("{x-request-id}o"),
            "method": atom("m"),
            "route": atom(f"{{{ROUTE_ENVIRON_KEY}}}e"),
            "path": atom("U"),
            "status": int(status) if status is not None else None,
            "duration_ms": round(duration_us / 1000, 3) if duration_us is not None else None,
            "bytes": atom("B"),
            "remote_addr": atom("h"),
        }
        log_data["message"] = f"{fields['method']} {fields['route'] or fields['path']} {status}"
        log_data.update(fields)


class TextFormatter(logging.Formatter):
    """A line for people: time, level, logger, message, then the request fields if any."""

    def __init__(self, **kwargs: Any):
        super().__init__(TEXT_FORMAT, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in REQUEST_FIELDS if hasattr(record, name))
        return f"{line} [{context}]" if context else line


class RefusedRequestText(logging.Filter):
    """gunicorn's warning about a request it refuses itself quotes the request line or a
    header ("Invalid request from ip=...: Invalid HTTP Version 'GET /?token=...'"), which
    may hold a token: the line keeps the address and drops the quote."""

    PREFIX = "Invalid request from ip="

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            address = message[len(self.PREFIX):].partition(": ")[0]
            record.msg, record.args = f"{self.PREFIX}{address}: refused by gunicorn (request text not logged)", None
        return True


def logging_config(config: Config) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the app's and gunicorn's loggers."""
    human = human_readable(config)
    app_formatter = "sessionsvc.logs.TextFormatter" if human else "sessionsvc.logs.JsonFormatter"
    access_formatter = "sessionsvc.logs.TextFormatter" if human else "sessionsvc.logs.AccessJsonFormatter"
    level = config.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_context": {"()": "sessionsvc.logs.RequestContext"},
            "refused_request_text": {"()": "sessionsvc.logs.RefusedRequestText"},
        },
        "formatters": {"app": {"()": app_formatter}, "access": {"()": access_formatter}},
        "handlers": {
            "app": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "app",
                "filters": ["request_context"],
            },
            "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "access"},
        },
        "loggers": {
            "sessionsvc": {"level": level, "handlers": ["app"], "propagate": False},
            "gunicorn.error": {
                "level": level, "handlers": ["app"], "filters": ["refused_request_text"], "propagate": False,
            },
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["app"]},
    }


def lean_log_records() -> None:
    """No line written here names the file, line, function, thread or process that logged
    it, so logging need not look them up for every record: the optimisations the Python
    logging HOWTO gives (``logging._srcfile = None``, ``logThreads``, ``logProcesses``,
    ``logMultiprocessing``). Under gevent the thread lookup is not cheap: every greenlet
    counts as a thread, looked up again for every record. Records then say "(unknown
    file)" and carry no thread or process names."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def install(app: Flask, config: Config) -> None:
    """Give the app's logger a handler unless one was configured (e.g. by gunicorn), and
    leave each request's route template in the environ, where gunicorn's access line and
    the request metrics (``sessionsvc.metrics.RequestMetrics``) read it."""
    lean_log_records()
    logger = logging.getLogger("sessionsvc")
    logger.setLevel(config.log_level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter() if human_readable(config) else JsonFormatter())
        handler.addFilter(RequestContext())
        logger.addHandler(handler)

    @app.before_request
    def leave_route_in_environ() -> None:
        route_template()
