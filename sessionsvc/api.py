"""The session-storage API: thin views that parse, call the vault, and return."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from flask import Response, after_this_request, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from flask_smorest.utils import resolve_schema_instance
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
from .jsonprovider import MIMETYPE, response_body
from .logs import request_id
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


# What webargs' use_args would hand on to its parser; the rest of `arguments`' keywords
# only shape the documentation.
WEBARGS_PARSE_OPTIONS = ("unknown", "validate", "error_status_code", "error_headers")


class ServiceBlueprint(Blueprint):
    ARGUMENTS_PARSER = QueryParser()

    def response(self, status_code: int, schema: Any = None, **doc: Any) -> Callable:
        """flask-smorest's `response`, for the documentation it collects; the response itself
        is rendered here, with less in between (docs/benchmarks.md): the view returns its
        body, or its body and headers, and gets `status_code` with the body dumped by
        `schema` as JSON, as flask-smorest would give it."""
        document = super().response(status_code, schema, **doc)
        schema = resolve_schema_instance(schema)

        def decorate(view: Callable) -> Callable:
            @functools.wraps(view)
            def render(*args: Any, **kwargs: Any) -> Response:
                body = view(*args, **kwargs)
                headers = None
                if type(body) is tuple:
                    body, headers = body
                return Response(response_body(schema.dump(body)), status_code, headers, content_type=MIMETYPE)

            render._apidoc = document(view)._apidoc  # type: ignore[attr-defined]
            return render

        return decorate

    def arguments(self, schema: Any, *, location: str = "json", as_kwargs: bool = False, **doc: Any) -> Callable:
        """flask-smorest's `arguments`, for the documentation it collects; the arguments
        themselves are parsed here, by the same parser with the same defaults, without the
        two call-through layers (webargs' `use_args` and flask-smorest's `ensure_sync`)
        it wraps each view in: the parsed dict is passed after the other positional
        arguments or, with `as_kwargs`, as keyword arguments, as `use_args` does."""
        if "arg_name" in doc:
            raise TypeError("arguments are passed positionally or as keyword arguments, not by arg_name")
        document = super().arguments(schema, location=location, as_kwargs=as_kwargs, **doc)
        schema = resolve_schema_instance(schema)
        parse = self.ARGUMENTS_PARSER.parse
        options = {name: doc[name] for name in WEBARGS_PARSE_OPTIONS if name in doc}

        def decorate(view: Callable) -> Callable:
            @functools.wraps(view)
            def parse_then_call(*args: Any, **kwargs: Any) -> Any:
                parsed = parse(schema, location=location, **options)
                if as_kwargs:
                    kwargs.update(parsed)
                    return view(*args, **kwargs)
                return view(*args, parsed, **kwargs)

            parse_then_call._apidoc = document(view)._apidoc  # type: ignore[attr-defined]
            return parse_then_call

        return decorate


blp = ServiceBlueprint(
    "session-storage",
    __name__,
    url_prefix=PREFIX,
    description="Session tokens kept encrypted in Redis, each living as long as its expiry says.",
)


audit_log = logging.getLogger("sessionsvc.audit")


def documented(operation_id: str, *error_codes: int, **doc: Any) -> Callable:
    """Document an operation: its id, any other OpenAPI fields (`doc`), and the error
    responses it can give, each in the one error shape."""

    def decorate(view: Callable) -> Callable:
        documented_view = blp.doc(operationId=operation_id, **doc)(view)
        for code in sorted({*error_codes, *COMMON_ERRORS}):
            documented_view = blp.alt_response(code, response=ERROR_RESPONSES[code][0])(documented_view)
        # flask-smorest's doc and alt_response wrap the view in a call-through layer each,
        # run on every request; only the documentation they collect is needed, so keep that.
        view._apidoc = documented_view._apidoc  # type: ignore[attr-defined]
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
    keyed fingerprint that ties it to the token without revealing it.

    `audit_log.info("token revealed", extra=...)` in effect: the same record reaches the
    same filters and handlers, made in one step (`logging.makeLogRecord`), since this is
    written on every reveal."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    record = revealed.record
    audit_log.handle(logging.makeLogRecord({
        "name": audit_log.name,
        "levelno": logging.INFO,
        "levelname": "INFO",
        "msg": "token revealed",
        "event": "token_revealed",
        "via": via,
        "request_id": request_id(),
        "record_id": record.id,
        "user_id": record.user_id,
        "client_key_id": g.get("client_key_id"),
        "fingerprint": revealed.fingerprint,
        "reveal_count": record.reveal_count,
    }))


def page_links(page: int, limit: int, total: int, user_id: str | None) -> str:
    """The RFC 8288 `Link` header of a listing page. Built directly: three or four
    url_for route-map builds cost ~30 µs, more than the rest of the header."""
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
    @documented("listTokens", 422)
    def get(self, page: int, limit: int, user_id: str | None = None):
        """List stored tokens, most recently saved first (previews only)."""
        total, records = vault().page(page, limit, user_id)
        body = {"data": records, "pagination": {"page": page, "limit": limit, "total": total}}
        return body, {"Link": page_links(page, limit, total, user_id)}

    @blp.arguments(TokenCreate(), example=EXAMPLES["create"])
    @blp.arguments(IdempotencyHeader(), location="headers", as_kwargs=True)
    @blp.response(201, TokenCreated, example=EXAMPLES["created"], headers=CREATED_HEADERS)
    @documented("createToken", *BODY_ERRORS, responses={201: {"links": CREATED_LINKS}})
    def post(self, body: dict, idempotency_key: str | None = None):
        """Store a token for a user (safe to retry with an `Idempotency-Key`)."""
        record = vault().save(
            body["user_id"], body["token"], body["expires_at"], idempotency_key, g.get("client_key_id", "")
        )
        # Built directly: url_for's route-map build is measurable on this hot path.
        headers = {"Location": f"{request.script_root}{PREFIX}/{record.id}", "ETag": etag(record)}
        if record.replayed:
            headers["Idempotent-Replayed"] = "true"
        return record, headers

    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, Cleared, example=EXAMPLES["cleared"])
    @documented("clearTokens", 422)
    def delete(self, user_id: str | None = None):
        """Clear every stored token (or one user's)."""
        count = vault().clear(user_id)
        after_this_request(reclaim_when_sent)
        return {"cleared": True, "message": CLEARED_MESSAGE, "count": count}


@blp.route("/current")
class CurrentTokenView(MethodView):
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, CurrentToken, example=EXAMPLES["current"])
    @documented("getCurrentToken", 404, 422)
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
    @blp.arguments(UserQuery(), location="query", as_kwargs=True)
    @blp.response(200, Validity, example=EXAMPLES["validity"])
    @documented("getTokenValidity", 422)
    def get(self, user_id: str | None = None):
        """Whether the current token is still valid, and for how long."""
        record = vault().validity(user_id)
        if record is None:
            return {"is_valid": False, "expires_at": None, "seconds_remaining": 0}
        return record


@blp.route("/<record_id:record_id>")
class TokenItem(MethodView):
    @blp.response(200, TokenDetail, example=EXAMPLES["detail"], headers=ETAG_HEADER)
    @documented("getToken", 404, responses={200: {"links": FETCHED_LINKS}})
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
        }, {"ETag": etag(record)}

    @blp.arguments(TokenRefresh(), example=EXAMPLES["refresh"])
    @blp.arguments(IfMatchHeader(), location="headers", as_kwargs=True)
    @blp.response(200, TokenSummary, example=EXAMPLES["refreshed"], headers=ETAG_HEADER)
    @documented("refreshToken", *BODY_ERRORS, 404, 412)
    def put(self, body: dict, record_id: str, if_match: tuple[int, ...] | None = None):
        """Replace a record's token and expiry (refresh); `If-Match` guards against lost updates."""
        record = vault().refresh(record_id, body["token"], body["expires_at"], if_match)
        return record, {"ETag": etag(record)}

    @blp.response(200, Deleted, example=EXAMPLES["deleted"])
    @documented("deleteToken", 404)
    def delete(self, record_id: str):
        """Delete one stored token."""
        vault().delete(record_id)
        return {"deleted": True, "id": record_id}
