"""The session-storage API: thin views that parse, call the vault, and return."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Response, after_this_request, current_app, g, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from werkzeug.routing import BaseConverter

from .apidoc import (
    BODY_ERRORS,
    CLEARED_MESSAGE,
    COMMON_ERRORS,
    CREATED_HEADERS,
    CREATED_LINKS,
    ETAG_HEADER,
    EXAMPLES,
    FETCHED_LINKS,
    LINK_HEADER,
)
from .errors import ERROR_RESPONSES
from .parsing import QueryParser
from .schemas import (
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

class ServiceBlueprint(Blueprint):
    ARGUMENTS_PARSER = QueryParser()


blp = ServiceBlueprint(
    "session-storage",
    __name__,
    url_prefix=PREFIX,
    description="Session tokens kept encrypted in Redis, each living as long as its expiry says.",
)


audit_log = logging.getLogger("sessionsvc.audit")
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
