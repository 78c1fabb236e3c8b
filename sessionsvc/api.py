"""The session-storage API: thin views that parse, call the vault, and return."""

from __future__ import annotations

from flask import current_app, g, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from werkzeug.routing import BaseConverter

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
from .vault import TokenVault

PREFIX = "/api/v1/session-storage"
CLEARED_MESSAGE = "All session tokens cleared from secure storage"

blp = Blueprint(
    "session-storage",
    __name__,
    url_prefix=PREFIX,
    description="Session tokens kept encrypted in Redis, each living as long as its expiry says.",
)


ETAG_HEADER = {"description": "The record's version, for `If-Match` on a later PUT.", "schema": {"type": "string"}}
LOCATION_HEADER = {"description": "The new record's URL.", "schema": {"type": "string"}}
REPLAYED_HEADER = {
    "description": "`true` when this answers a repeated `Idempotency-Key` (nothing was created).",
    "schema": {"type": "string", "enum": ["true"]},
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


class RecordIdConverter(BaseConverter):
    """One path segment, except the literal routes: `current` and `validity` win over an id
    for every method (PUT /current is a 405, not a lookup of a record called "current")."""

    regex = r"(?!(?:current|validity)(?:/|\Z))[^/]+"


# How a record id is documented: what ids look like (any other segment is simply a 404).
RECORD_ID_SCHEMA = {"type": "string", "pattern": "^store_[0-9]+$", "example": "store_001"}


def vault() -> TokenVault:
    return current_app.extensions["sessionsvc"]


def etag(record: Record) -> str:
    return f'"{record.version}"'


@blp.before_request
def require_json_body():
    if request.method in ("POST", "PUT") and not request.is_json:
        abort(415, message="Request body must be JSON (Content-Type: application/json).")


@blp.route("")
class TokenCollection(MethodView):
    @blp.arguments(PageQuery, location="query", as_kwargs=True)
    @blp.response(200, TokenPage)
    def get(self, page: int, limit: int, user_id: str | None = None):
        """List stored tokens, most recently saved first (previews only)."""
        total, records = vault().page(page, limit, user_id)
        return {"data": records, "pagination": {"page": page, "limit": limit, "total": total}}

    @blp.arguments(TokenCreate)
    @blp.arguments(IdempotencyHeader, location="headers", as_kwargs=True)
    @blp.response(
        201,
        TokenCreated,
        headers={"Location": LOCATION_HEADER, "ETag": ETAG_HEADER, "Idempotent-Replayed": REPLAYED_HEADER},
    )
    @blp.doc(operationId="createToken", responses={201: {"links": CREATED_LINKS}})
    def post(self, body: dict, idempotency_key: str | None = None):
        """Store a token for a user (safe to retry with an `Idempotency-Key`)."""
        record = vault().save(
            body["user_id"], body["token"], body["expires_at"], idempotency_key, g.get("client_key_id", "")
        )
        headers = {"Location": url_for(".TokenItem", record_id=record.id), "ETag": etag(record)}
        if record.replayed:
            headers["Idempotent-Replayed"] = "true"
        return record, 201, headers

    @blp.arguments(UserQuery, location="query", as_kwargs=True)
    @blp.response(200, Cleared)
    def delete(self, user_id: str | None = None):
        """Clear every stored token (or one user's)."""
        count = vault().clear(user_id)
        return {"cleared": True, "message": CLEARED_MESSAGE, "count": count}


@blp.route("/current")
class CurrentTokenView(MethodView):
    @blp.arguments(UserQuery, location="query", as_kwargs=True)
    @blp.response(200, CurrentToken)
    def get(self, user_id: str | None = None):
        """The most recently saved token still held (optionally for one user)."""
        revealed = vault().current(user_id)
        if revealed is None:
            abort(404, message="No session token is stored.")
        g.record_id = revealed.record.id
        record = revealed.record
        return {"token": revealed.token, "expires_at": record.expires_at, "is_valid": record.is_valid}


@blp.route("/validity")
class ValidityView(MethodView):
    @blp.arguments(UserQuery, location="query", as_kwargs=True)
    @blp.response(200, Validity)
    def get(self, user_id: str | None = None):
        """Whether the current token is still valid, and for how long."""
        record = vault().validity(user_id)
        if record is None:
            return {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
        return record


@blp.route("/<record_id:record_id>")
class TokenItem(MethodView):
    @blp.response(200, TokenDetail, headers={"ETag": ETAG_HEADER})
    @blp.doc(operationId="getToken", responses={200: {"links": FETCHED_LINKS}})
    def get(self, record_id: str):
        """One stored token, in full."""
        g.record_id = record_id
        revealed = vault().reveal(record_id)
        record = revealed.record
        return {
            "id": record.id,
            "user_id": record.user_id,
            "token": revealed.token,
            "expires_at": record.expires_at,
            "is_valid": record.is_valid,
            "saved_at": record.saved_at,
        }, 200, {"ETag": etag(record)}

    @blp.arguments(TokenRefresh)
    @blp.arguments(IfMatchHeader, location="headers", as_kwargs=True)
    @blp.response(200, TokenSummary, headers={"ETag": ETAG_HEADER})
    @blp.alt_response(412, response="PRECONDITION_FAILED")
    @blp.doc(operationId="refreshToken")
    def put(self, body: dict, record_id: str, if_match: tuple[int, ...] | None = None):
        """Replace a record's token and expiry (refresh); `If-Match` guards against lost updates."""
        record = vault().refresh(record_id, body["token"], body["expires_at"], if_match)
        return record, 200, {"ETag": etag(record)}

    @blp.response(200, Deleted)
    @blp.doc(operationId="deleteToken")
    def delete(self, record_id: str):
        """Delete one stored token."""
        vault().delete(record_id)
        return {"deleted": True, "id": record_id}
