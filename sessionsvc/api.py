"""The session-storage API: thin views that parse, call the vault, and return."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Response, after_this_request, current_app, g, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from marshmallow import Schema
from webargs.flaskparser import FlaskParser
from werkzeug.routing import BaseConverter

from .errors import ERROR_RESPONSES
from .schemas import (
    EXAMPLE_TOKEN,
    Cleared,
    CurrentToken,
    Deleted,
    IdempotencyHeader,
    IfMatchHeader,
    PageQuery,
    TokenCreate,
    TokenCreated,
    TokenDetail,
    TokenPage,
    TokenRefresh,
    TokenSummary,
    UserQuery,
    Validity,
)
from .store import Record
from .vault import Revealed, TokenVault

PREFIX = "/api/v1/session-storage"
CLEARED_MESSAGE = "All session tokens cleared from secure storage"

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


class ServiceBlueprint(Blueprint):
    ARGUMENTS_PARSER = QueryParser()


blp = ServiceBlueprint(
    "session-storage",
    __name__,
    url_prefix=PREFIX,
    description="Session tokens kept encrypted in Redis, each living as long as its expiry says.",
)


audit_log = logging.getLogger("sessionsvc.audit")
# What the contract shows for each operation, served as the OpenAPI examples.
EXAMPLE_SUMMARY = {
    "id": "store_001",
    "user_id": "usr_9a2f31",
    "token_preview": "eyJhbGci...Q3Yk",  # nosec B105 - the contract's example, not a credential
    "expires_at": "2026-03-26T11:00:00Z",
    "is_valid": True,
    "saved_at": "2026-03-26T08:00:00Z",
}
EXAMPLES = {
    "list": {"data": [EXAMPLE_SUMMARY], "pagination": {"page": 1, "limit": 20, "total": 1}},
    "detail": {
        "id": "store_001",
        "user_id": "usr_9a2f31",
        "token": EXAMPLE_TOKEN,
        "expires_at": "2026-03-26T11:00:00Z",
        "is_valid": True,
        "saved_at": "2026-03-26T08:00:00Z",
    },
    "current": {"token": EXAMPLE_TOKEN, "expires_at": "2026-03-26T11:00:00Z", "is_valid": True},
    "validity": {"is_valid": True, "expires_at": "2026-03-26T11:00:00Z", "seconds_remaining": 3540},
    "create": {"user_id": "usr_9a2f31", "token": EXAMPLE_TOKEN, "expires_at": "2026-03-26T11:00:00Z"},
    "created": {
        **EXAMPLE_SUMMARY,
        "id": "store_002",
        "saved_at": "2026-03-26T09:20:00Z",
        "created_at": "2026-03-26T09:20:00Z",
    },
    "refresh": {
        "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.refreshed...",  # nosec B105 - the contract's example
        "expires_at": "2026-03-26T13:00:00Z",
    },
    "refreshed": {
        **EXAMPLE_SUMMARY,
        "token_preview": "eyJhbGci...Zm2w",  # nosec B105 - the contract's example, not a credential
        "expires_at": "2026-03-26T13:00:00Z",
        "saved_at": "2026-03-26T09:20:01Z",
    },
    "cleared": {"cleared": True, "message": CLEARED_MESSAGE},
    "deleted": {"deleted": True, "id": "store_001"},
}
# Every /api/v1 operation can answer these (401 only when API keys are configured).
COMMON_ERRORS = (401, 429, 503)
BODY_ERRORS = (400, 413, 415, 422)
ETAG = {"description": "The record's version, for `If-Match` on a later PUT.", "schema": {"type": "string"}}
ETAG_HEADER = {"ETag": ETAG}
CREATED_HEADERS = {
    "Location": {"description": "The new record's URL.", "schema": {"type": "string"}},
    "ETag": ETAG,
    "Idempotent-Replayed": {
        "description": "`true` when this answers a repeated `Idempotency-Key` (nothing was created).",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
# OpenAPI links: what a client (or a stateful fuzzer) can do with a record it has seen.
CREATED_LINKS = {
    name: {"operationId": operation, "parameters": {"record_id": "$response.body#/id"}}
    for name, operation in (("GetToken", "getToken"), ("RefreshToken", "refreshToken"), ("DeleteToken", "deleteToken"))
}
FETCHED_LINKS = {
    "RefreshThisVersion": {
        "operationId": "refreshToken",
        "parameters": {"record_id": "$response.body#/id", "header.If-Match": "$response.header.ETag"},
    },
    "DeleteToken": {"operationId": "deleteToken", "parameters": {"record_id": "$response.body#/id"}},
}
LINK_HEADER = {
    "Link": {
        "description": "RFC 8288 links to the first, previous, next and last pages "
        "(`prev` and `next` only where such a page exists).",
        "schema": {"type": "string"},
        "example": '</api/v1/session-storage?page=1&limit=20>; rel="first", '
        '</api/v1/session-storage?page=1&limit=20>; rel="last"',
    }
}


def documented_errors(*codes: int) -> Callable:
    """Document the error responses an operation can give, each in the one error shape."""

    def decorate(view: Callable) -> Callable:
        documented = view
        for code in sorted({*codes, *COMMON_ERRORS}):
            documented = blp.alt_response(code, response=ERROR_RESPONSES[code][0])(documented)
        # flask-smorest's alt_response wraps the view in a call-through layer per code, run
        # on every request; only the documentation it collects is needed, so keep that.
        view._apidoc = documented._apidoc  # type: ignore[attr-defined]
        return view

    return decorate


class RecordIdConverter(BaseConverter):
    """One path segment, except the literal routes: `current` and `validity` win over an id
    for every method (PUT /current is a 405, not a lookup of a record called "current")."""

    regex = r"(?!(?:current|validity)(?:/|\Z))[^/]+"


# How a record id is documented: what ids look like (any other segment is simply a 404).
RECORD_ID_SCHEMA = {"type": "string", "pattern": "^store_[0-9]+$", "example": "store_001"}


def etag(record: Record) -> str:
    return f'"{record.version}"'


def vault() -> TokenVault:
    return current_app.extensions["sessionsvc"]


def reclaim_when_sent(response: Response) -> Response:
    response.call_on_close(vault().reclaim)
    return response


def audit_reveal(revealed: Revealed, via: str) -> None:
    """One structured line per full token returned: who asked, for which record, and a
    keyed fingerprint that ties it to the token without revealing it."""
    record = revealed.record
    audit_log.info(
        "token revealed",
        extra={
            "event": "token_revealed",
            "via": via,
            "request_id": g.get("request_id"),
            "record_id": record.id,
            "user_id": record.user_id,
            "client_key_id": g.get("client_key_id"),
            "fingerprint": revealed.fingerprint,
            "reveal_count": record.reveal_count,
        },
    )


def page_links(page: int, limit: int, total: int, user_id: str | None) -> str:
    """The RFC 8288 `Link` header of a listing page."""
    last = max(1, -(-total // limit))
    targets = [("first", 1)]
    if page > 1:
        targets.append(("prev", min(page - 1, last)))
    if page < last:
        targets.append(("next", page + 1))
    targets.append(("last", last))
    return ", ".join(
        f'<{url_for(".TokenCollection", page=number, limit=limit, user_id=user_id)}>; rel="{relation}"'
        for relation, number in targets
    )


@blp.before_request
def require_json_body():
    if request.method not in ("POST", "PUT"):
        return
    if not request.is_json:
        abort(415, message="Request body must be JSON (Content-Type: application/json).")
    if request.content_length is None:
        # A chunked body is cut at the size limit without complaint; reading one byte
        # more makes werkzeug raise the same 413 a declared Content-Length would get.
        request.get_data(cache=True)
        request.stream.read(1)


@blp.route("")
class TokenCollection(MethodView):
    @blp.doc(operationId="listTokens")
    @blp.arguments(PageQuery(), location="query", as_kwargs=True)
    @blp.response(200, TokenPage, example=EXAMPLES["list"], headers=LINK_HEADER)
    @documented_errors(422)
    def get(self, page: int, limit: int, user_id: str | None = None):
        """List stored tokens, most recently saved first (previews only)."""
        total, records = vault().page(page, limit, user_id)
        body = {"data": records, "pagination": {"page": page, "limit": limit, "total": total}}
        return body, 200, {"Link": page_links(page, limit, total, user_id)}

    @blp.doc(operationId="createToken", responses={201: {"links": CREATED_LINKS}})
    @blp.arguments(TokenCreate(), example=EXAMPLES["create"])
    @blp.arguments(IdempotencyHeader(), location="headers", as_kwargs=True)
    @blp.response(201, TokenCreated, example=EXAMPLES["created"], headers=CREATED_HEADERS)
    @documented_errors(*BODY_ERRORS)
    def post(self, body: dict, idempotency_key: str | None = None):
        """Store a token for a user (safe to retry with an `Idempotency-Key`)."""
        record = vault().save(
            body["user_id"], body["token"], body["expires_at"], idempotency_key, g.get("client_key_id", "")
        )
        # Built directly: url_for's route-map build is measurable on this hot path.
        headers = {"Location": f"{request.script_root}{PREFIX}/{record.id}", "ETag": etag(record)}
        if record.replayed:
            headers["Idempotent-Replayed"] = "true"
        return record, 201, headers

    @blp.doc(operationId="clearTokens")
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, Cleared, example=EXAMPLES["cleared"])
    @documented_errors(422)
    def delete(self, user_id: str | None = None):
        """Clear every stored token (or one user's)."""
        count = vault().clear(user_id)
        after_this_request(reclaim_when_sent)
        return {"cleared": True, "message": CLEARED_MESSAGE, "count": count}


@blp.route("/current")
class CurrentTokenView(MethodView):
    @blp.doc(operationId="getCurrentToken")
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, CurrentToken, example=EXAMPLES["current"])
    @documented_errors(404, 422)
    def get(self, user_id: str | None = None):
        """The most recently saved token still held (optionally for one user)."""
        revealed = vault().current(user_id)
        if revealed is None:
            abort(404, message="No session token is stored.")
        audit_reveal(revealed, "current")
        record = revealed.record
        return {"token": revealed.token, "expires_at": record.expires_at, "is_valid": record.is_valid}


@blp.route("/validity")
class ValidityView(MethodView):
    @blp.doc(operationId="getTokenValidity")
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, Validity, example=EXAMPLES["validity"])
    @documented_errors(422)
    def get(self, user_id: str | None = None):
        """Whether the current token is still valid, and for how long."""
        record = vault().validity(user_id)
        if record is None:
            return {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
        return record


@blp.route("/<record_id:record_id>")
class TokenItem(MethodView):
    @blp.doc(operationId="getToken", responses={200: {"links": FETCHED_LINKS}})
    @blp.response(200, TokenDetail, example=EXAMPLES["detail"], headers=ETAG_HEADER)
    @documented_errors(404)
    def get(self, record_id: str):
        """One stored token, in full."""
        revealed = vault().reveal(record_id)
        audit_reveal(revealed, "id")
        record = revealed.record
        return {
            "id": record.id,
            "user_id": record.user_id,
            "token": revealed.token,
            "expires_at": record.expires_at,
            "is_valid": record.is_valid,
            "saved_at": record.saved_at,
        }, 200, {"ETag": etag(record)}

    @blp.doc(operationId="refreshToken")
    @blp.arguments(TokenRefresh(), example=EXAMPLES["refresh"])
    @blp.arguments(IfMatchHeader(), location="headers", as_kwargs=True)
    @blp.response(200, TokenSummary, example=EXAMPLES["refreshed"], headers=ETAG_HEADER)
    @documented_errors(*BODY_ERRORS, 404, 412)
    def put(self, body: dict, record_id: str, if_match: tuple[int, ...] | None = None):
        """Replace a record's token and expiry (refresh); `If-Match` guards against lost updates."""
        record = vault().refresh(record_id, body["token"], body["expires_at"], if_match)
        return record, 200, {"ETag": etag(record)}

    @blp.doc(operationId="deleteToken")
    @blp.response(200, Deleted, example=EXAMPLES["deleted"])
    @documented_errors(404)
    def delete(self, record_id: str):
        """Delete one stored token."""
        vault().delete(record_id)
        return {"deleted": True, "id": record_id}
