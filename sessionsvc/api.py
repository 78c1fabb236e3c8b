"""The session-storage API: thin views that parse, call the vault, and return."""

from __future__ import annotations

import logging
from urllib.parse import quote_plus

from flask import Response, after_this_request, current_app, g, request
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
    EVENT_STREAM_CONTENT,
    EXAMPLES,
    FETCHED_LINKS,
    LINK_HEADER,
)
from .errors import ERROR_RESPONSES
from .eventstream import MIMETYPE as EVENT_STREAM
from .eventstream import event_stream, event_stream_response
from .logs import request_id
from .parsing import QueryParser
from .schemas import (
    Cleared,
    ClearQuery,
    CurrentToken,
    Deleted,
    EventQuery,
    IdempotencyHeader,
    IfMatchHeader,
    LastEventIdHeader,
    PageQuery,
    SessionEvent,
    SessionEventPage,
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
TOO_MANY_STREAMS = "This instance serves as many event streams as it may; retry shortly, or read JSON pages."
STREAM_RETRY_SECONDS = 5
# The validity answer when no token is held.
NO_CURRENT_TOKEN = {"is_valid": False, "expires_at": None, "seconds_remaining": 0}


class ServiceBlueprint(Blueprint):
    """flask-smorest's Blueprint with the service's webargs parser (its documented hook)."""

    ARGUMENTS_PARSER = QueryParser()


blp = ServiceBlueprint(
    "session-storage",
    __name__,
    url_prefix=PREFIX,
    description="Session tokens kept encrypted in Redis, each living as long as its expiry says.",
)


audit_log = logging.getLogger("sessionsvc.audit")


def answers(*error_codes: int) -> dict[int, str]:
    """For an operation's `@blp.doc(responses=...)`: a reference to the error response of each
    code it can answer (and of those every operation can), each in the one error shape. One
    `doc` layer documents them all; an `alt_response` per code would add a wrapper call to
    every request."""
    return {code: ERROR_RESPONSES[code][0] for code in sorted({*error_codes, *COMMON_ERRORS})}


class RecordIdConverter(BaseConverter):
    """One path segment, except the literal routes: `current`, `validity` and `events` win
    over an id for every method (PUT /current is a 405, not a lookup of a record called
    "current")."""

    regex = r"(?!(?:current|validity|events)(?:/|\Z))[^/]+"


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
    audit_log.info("token revealed", extra={
        "event": "token_revealed",
        "via": via,
        "request_id": request_id(),
        "record_id": record.id,
        "user_id": record.user_id,
        "client_key_id": g.get("client_key_id"),
        "fingerprint": revealed.fingerprint,
        "reveal_count": record.reveal_count,
    })


def page_links(page: int, limit: int, total: int, user_id: str | None) -> str:
    """The RFC 8288 `Link` header of a listing page, built from PREFIX like `Location`."""
    last = max(1, -(-total // limit))
    targets = [("first", 1)]
    if page > 1:
        targets.append(("prev", min(page - 1, last)))
    if page < last:
        targets.append(("next", page + 1))
    targets.append(("last", last))
    base = f"{request.script_root}{PREFIX}?page="
    rest = f"&limit={limit}" if user_id is None else f"&limit={limit}&user_id={quote_plus(user_id)}"
    return ", ".join(f'<{base}{number}{rest}>; rel="{relation}"' for relation, number in targets)


@blp.route("")
class TokenCollection(MethodView):
    @blp.arguments(PageQuery(), location="query", as_kwargs=True)
    @blp.response(200, TokenPage, example=EXAMPLES["list"], headers=LINK_HEADER)
    @blp.doc(operationId="listTokens", responses=answers(422))
    def get(self, page: int, limit: int, user_id: str | None = None):
        """List stored tokens, most recently saved first (previews only)."""
        total, records = vault().page(page, limit, user_id)
        body = {"data": records, "pagination": {"page": page, "limit": limit, "total": total}}
        return body, {"Link": page_links(page, limit, total, user_id)}

    @blp.arguments(TokenCreate(), example=EXAMPLES["create"])
    @blp.arguments(IdempotencyHeader(), location="headers", as_kwargs=True)
    @blp.response(201, TokenCreated, example=EXAMPLES["created"], headers=CREATED_HEADERS)
    @blp.doc(operationId="createToken", responses={**answers(*BODY_ERRORS), 201: {"links": CREATED_LINKS}})
    def post(self, body: dict, idempotency_key: str | None = None):
        """Store a token for a user (safe to retry with an Idempotency-Key)."""
        record = vault().save(
            body["user_id"], body["token"], body["expires_at"], idempotency_key, g.get("client_key_id", "")
        )
        headers = {"Location": f"{request.script_root}{PREFIX}/{record.id}", "ETag": etag(record)}
        if record.replayed:
            headers["Idempotent-Replayed"] = "true"
        return record, headers

    @blp.arguments(ClearQuery(), location="query", as_kwargs=True)
    @blp.response(200, Cleared, example=EXAMPLES["cleared"])
    @blp.doc(operationId="clearTokens", responses=answers(404, 422))
    def delete(self, user_id: str | None = None, keep: str | None = None):
        """Clear every stored token, one user's, or all of one user's but one (sign out everywhere else)."""
        count = vault().clear(user_id, keep)
        after_this_request(reclaim_when_sent)
        return {"cleared": True, "message": CLEARED_MESSAGE, "count": count}


@blp.route("/current")
class CurrentTokenView(MethodView):
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, CurrentToken, example=EXAMPLES["current"])
    @blp.doc(operationId="getCurrentToken", responses=answers(404, 422))
    def get(self, user_id: str | None = None):
        """The most recently saved token still held (optionally for one user)."""
        revealed = vault().current(user_id)
        if revealed is None:
            abort(404, message="No session token is stored.")
        audit_reveal(revealed, "current")
        return revealed


@blp.route("/validity")
class ValidityView(MethodView):
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, Validity, example=EXAMPLES["validity"])
    @blp.doc(operationId="getTokenValidity", responses=answers(422))
    def get(self, user_id: str | None = None):
        """Whether the current token is still valid, and for how long."""
        record = vault().validity(user_id)
        return NO_CURRENT_TOKEN if record is None else record


@blp.route("/events")
class EventsView(MethodView):
    @blp.arguments(EventQuery(), location="query", as_kwargs=True)
    @blp.arguments(LastEventIdHeader(), location="headers", as_kwargs=True)
    @blp.response(200, SessionEventPage, example=EXAMPLES["events"])
    @blp.doc(operationId="listEvents",
             responses={**answers(410, 422), 200: {"content": {EVENT_STREAM: EVENT_STREAM_CONTENT}}})
    def get(self, limit: int, after: str | None = None, user_id: str | None = None, event_type: str | None = None,
            last_event_id: str | None = None):
        """What happened to stored tokens, oldest first; Server-Sent Events with Accept: text/event-stream.

        Every create, refresh, delete, clear, eviction and expiry, each written in the same atomic
        step as the change. Read on with `after` = the answer's `next`; a cursor older than the
        oldest event held (the stream keeps about SESSIONSVC_EVENTS_MAXLEN) is a 410 naming the
        oldest cursor held.
        """
        streaming = request.accept_mimetypes.best_match(("application/json", EVENT_STREAM)) == EVENT_STREAM
        if streaming and last_event_id is not None:
            after = last_event_id
        page = vault().events(after, limit, user_id, event_type)
        if not streaming:
            return {"data": page.events, "next": page.next}
        slots = current_app.extensions["sessionsvc.event_streams"]
        if not slots.take():
            abort(503, message=TOO_MANY_STREAMS, headers={"Retry-After": str(STREAM_RETRY_SECONDS)})
        config, dumps, schema = current_app.config["SESSIONSVC"], current_app.json.dumps, SessionEvent()
        return event_stream_response(event_stream(
            vault(), page, after, limit, user_id, event_type,
            seconds=config.events_stream_seconds,
            heartbeat_seconds=config.events_heartbeat_seconds,
            wait_ms=int(config.redis_timeout_seconds * 750),
            render=lambda event: dumps(schema.dump(event)),
        ), slots)


@blp.route("/<record_id:record_id>")
class TokenItem(MethodView):
    @blp.response(200, TokenDetail, example=EXAMPLES["detail"], headers=ETAG_HEADER)
    @blp.doc(operationId="getToken", responses={**answers(404), 200: {"links": FETCHED_LINKS}})
    def get(self, record_id: str):
        """One stored token, in full."""
        revealed = vault().reveal(record_id)
        audit_reveal(revealed, "id")
        return revealed, {"ETag": etag(revealed.record)}

    @blp.arguments(TokenRefresh(), example=EXAMPLES["refresh"])
    @blp.arguments(IfMatchHeader(), location="headers", as_kwargs=True)
    @blp.response(200, TokenSummary, example=EXAMPLES["refreshed"], headers=ETAG_HEADER)
    @blp.doc(operationId="refreshToken", responses=answers(*BODY_ERRORS, 404, 412))
    def put(self, body: dict, record_id: str, if_match: tuple[int, ...] | None = None):
        """Replace a record's token and expiry (refresh); If-Match guards against lost updates."""
        record = vault().refresh(record_id, body["token"], body["expires_at"], if_match)
        return record, {"ETag": etag(record)}

    @blp.response(200, Deleted, example=EXAMPLES["deleted"])
    @blp.doc(operationId="deleteToken", responses=answers(404))
    def delete(self, record_id: str):
        """Delete one stored token."""
        vault().delete(record_id)
        return {"deleted": True, "id": record_id}
