"""The access line's atoms, worked out when the line reads them: gunicorn's logger with one
change (gunicorn's `logger_class` setting, set in `gunicorn.conf.py`).

For every request gunicorn's `Logger.access` builds every atom it knows (`Logger.atoms`:
each environ entry, request and response header, a formatted time, ...), copies them all
into `SafeAtoms` to escape quotes, and only then formats the line, which reads eight or
nine of them: most of the access line's cost. `AccessLogger.access` hands the line
`LazyAtoms` instead: the same mapping (the same keys and values, the same escaping,
`SafeAtoms`'s "-" for a missing atom), each value worked out as it is read. The atoms
the service's line reads are worked out here (`FAST_ATOMS`, and a header or environ
entry by name); reading any other, or going over all of them, builds gunicorn's own
atoms once, through its public `atoms` and `atoms_wrapper_class`.

The one bypass of gunicorn on the request path, kept because it buys more than the
project asks of a bypass (docs/benchmarks.md, "Cost per request"); tests/test_ops.py holds
`LazyAtoms` to what gunicorn's own atoms give.

Imported by gunicorn's master: nothing here may import redis or the app.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

ABSENT = "-"  # what SafeAtoms answers for an atom it does not have
_NOT_FOUND = object()


def escaped(value: Any) -> Any:
    """A value as SafeAtoms keeps it: quotes escaped in text."""
    return value.replace('"', '\\"') if isinstance(value, str) else value


def _status(resp: Any, environ: dict, request_time: Any) -> Any:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


# The atoms worked out here, each as gunicorn's Logger.atoms works it out (gunicorn 27).
FAST_ATOMS = {
    "h": lambda resp, environ, request_time: environ.get("REMOTE_ADDR", "-"),
    "m": lambda resp, environ, request_time: environ.get("REQUEST_METHOD"),
    "U": lambda resp, environ, request_time: environ.get("PATH_INFO"),
    "q": lambda resp, environ, request_time: environ.get("QUERY_STRING"),
    "s": lambda resp, environ, request_time: _status(resp, environ, request_time),
    "B": lambda resp, environ, request_time: getattr(resp, "sent", None),
    "D": lambda resp, environ, request_time: request_time.seconds * 1000000 + request_time.microseconds,
    "M": lambda resp, environ, request_time: request_time.seconds * 1000 + int(request_time.microseconds / 1000),
}


class LazyAtoms(Mapping):
    """gunicorn's `SafeAtoms` of one request, each atom worked out when it is read.

    ``atoms[key]`` answers as SafeAtoms does (a ``{...}`` key in any case, "-" when
    absent); ``atoms.get(key)`` as the dict it is (the exact key, or the default)."""

    __slots__ = ("_logger", "_resp", "_req", "_environ", "_request_time", "_all")

    def __init__(self, logger: Logger, resp: Any, req: Any, environ: dict, request_time: Any):
        self._logger = logger
        self._resp = resp
        self._req = req
        self._environ = environ
        self._request_time = request_time
        self._all: dict | None = None

    def everything(self) -> dict:
        """gunicorn's own SafeAtoms of the request, built once when first needed."""
        if self._all is None:
            logger = self._logger
            self._all = logger.atoms_wrapper_class(logger.atoms(self._resp, self._req, self._environ,
                                                                self._request_time))
        return self._all

    def _pairs(self, kind: str) -> Any:
        if kind == "e":
            return self._environ.items()
        if kind == "o":
            headers = self._resp.headers
        else:
            headers = self._req.headers if hasattr(self._req, "headers") else self._req
        return headers.items() if hasattr(headers, "items") else headers

    def _named(self, key: str) -> Any:
        """The value under an exact ``{name}x`` key (x: i, o or e), or _NOT_FOUND: the
        last entry whose lower-cased name is `name` (gunicorn's dict keeps the last)."""
        name, kind = key[1:-2], key[-1]
        if len(key) < 4 or key[-2] != "}" or kind not in "ioe" or name != name.lower():
            return self.everything().get(key, _NOT_FOUND)
        found, length = _NOT_FOUND, len(name)
        for entry, value in self._pairs(kind):
            # (lower-casing keeps an ASCII name's length: most entries are passed over by it)
            if (len(entry) == length or not entry.isascii()) and entry.lower() == name:
                found = value
        return found

    def get(self, key: str, default: Any = None) -> Any:
        if self._all is not None:
            return self._all.get(key, default)
        atom = FAST_ATOMS.get(key)
        if atom is not None:
            return escaped(atom(self._resp, self._environ, self._request_time))
        if key.startswith("{"):
            value = self._named(key)
            return default if value is _NOT_FOUND else escaped(value)
        return self.everything().get(key, default)

    def __getitem__(self, key: str) -> Any:
        if self._all is not None:
            return self._all[key]
        value = self.get(key.lower() if key.startswith("{") else key, _NOT_FOUND)
        return ABSENT if value is _NOT_FOUND else value

    def __contains__(self, key: object) -> bool:
        return key in self.everything()

    def __iter__(self) -> Iterator[str]:
        return iter(self.everything())

    def __len__(self) -> int:
        return len(self.everything())

    def __bool__(self) -> bool:
        return True  # never empty (logging asks before it takes a mapping as the line's arguments)


class AccessLogger(Logger):
    """gunicorn's logger, with the access line's atoms worked out as they are read.

    With statsd configured (``--statsd-host``), gunicorn's own statsd logger is used
    instead, as gunicorn would have chosen it for its default logger class."""

    def __new__(cls, cfg: Any) -> Logger:
        if cfg.statsd_host:
            return Statsd(cfg)
        return super().__new__(cls)

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        """gunicorn's `Logger.access`, given `LazyAtoms` rather than SafeAtoms."""
        if not self.access_log_enabled:
            return
        try:
            self.access_log.info(self.cfg.access_log_format, LazyAtoms(self, resp, req, environ, request_time))
        except Exception:
            self.error(traceback.format_exc())
