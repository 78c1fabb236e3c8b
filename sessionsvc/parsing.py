"""webargs' parser: the body rules (JSON only, size limit) and a cache for what repeats
(query strings and absent headers)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from flask_smorest import abort
from marshmallow import Schema, missing
from webargs.flaskparser import FlaskParser, is_json_request

from .errors import MESSAGES

QUERY_CACHE_SIZE = 1024


class QueryParser(FlaskParser):
    """webargs' parser that validates each distinct query string once per process: query
    strings repeat (none at all, ``page=1&limit=20``) and the query schemas are pure
    functions of them. Invalid ones are never cached, so they fail every time.

    Header schemas are pure functions of the headers they declare; the usual request
    sends none of them (no ``Idempotency-Key``, no ``If-Match``), and that one case is
    cached too. Present values vary per request, so those are parsed every time."""

    def __init__(self) -> None:
        super().__init__()
        self._parsed: dict[tuple[int, str, bytes], dict] = {}
        self._header_names: dict[int, tuple[str, ...]] = {}

    def load_json(self, req: Any, schema: Schema) -> Any:
        """A body must be JSON (415 otherwise) and within the size limit (413). Decoded by
        orjson (strict RFC 8259: no NaN, no lone surrogates); an empty body is missing and
        anything else that does not decode is a 400, as webargs' own loader answers them."""
        if not is_json_request(req):
            abort(415, message=MESSAGES[415])
        if req.content_length is None:
            # A chunked body is cut at the size limit without complaint; reading one byte
            # more makes werkzeug raise the same 413 a declared Content-Length would get.
            req.get_data(cache=True)
            req.stream.read(1)
        body = req.get_data(cache=True)
        if not body:
            return missing
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as error:
            abort(400, exc=error, messages={"json": ["Invalid JSON body."]})

    def _cache_key(self, argmap: Schema, req: Any, location: str | None) -> bytes | None:
        if location == "query":
            return req.query_string
        names = self._header_names.get(id(argmap))
        if names is None:
            names = tuple(field.data_key or name for name, field in argmap.fields.items())
            self._header_names[id(argmap)] = names
        return None if any(name in req.headers for name in names) else b""

    def parse(self, argmap: Any, req: Any = None, *, location: str | None = None, **kwargs: Any) -> Any:
        if location not in ("query", "headers") or not isinstance(argmap, Schema) or kwargs.get("validate"):
            return super().parse(argmap, req, location=location, **kwargs)
        current = req or request
        value = self._cache_key(argmap, current, location)
        if value is None:
            return super().parse(argmap, req, location=location, **kwargs)
        key = (id(argmap), location, value)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = super().parse(argmap, req, location=location, **kwargs)
            if len(self._parsed) >= QUERY_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[key] = parsed
        return dict(parsed)
