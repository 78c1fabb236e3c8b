"""One error shape for everything: flask-smorest's ``{code, status, message, errors?}``.

Domain errors from the store and the cipher are mapped to HTTP here, once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, current_app
from flask_smorest import Api
from flask_smorest.error_handler import ErrorSchema as SmorestErrorSchema
from flask_smorest.utils import prepare_response
from marshmallow import fields
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from .apidoc import marshmallow_plugin
from .crypto import DecryptionError
from .store import (
    AlreadyExpired,
    BadCursor,
    EventsTrimmed,
    IdempotencyConflict,
    NotFound,
    PageTooDeep,
    PreconditionFailed,
    StoreUnavailable,
    UserLimitReached,
)

log = logging.getLogger("sessionsvc")

MESSAGES = {
    400: "The request body is not valid JSON.",
    404: "Not found.",
    405: "Method not allowed on this resource.",
    413: "Request body too large.",
    415: "Request body must be JSON (Content-Type: application/json).",
    422: "The request has invalid fields; see errors.",
    429: "Too many requests; retry after the number of seconds in Retry-After.",
    500: "Internal error.",
}


# A name the client sent is echoed back only if it looks like a field name: a token pasted
# as a key must not come back in an error body (which clients and proxies tend to log).
SHOWN_FIELD_NAME = re.compile(r"_?[a-z][a-z0-9_]{0,23}\Z")  # "_schema" is marshmallow's own
HIDDEN_FIELDS = "_unknown"


def without_unshowable_names(errors: Any) -> Any:
    """``errors`` with body field names that do not look like field names folded into one
    entry (query and header names are the service's own: unknown ones are ignored)."""
    if not isinstance(errors, dict):
        return errors
    cleaned: dict = {}
    for location, by_field in errors.items():
        if location != "json" or not isinstance(by_field, dict):
            cleaned[location] = by_field
            continue
        shown = {name: messages for name, messages in by_field.items() if SHOWN_FIELD_NAME.match(str(name))}
        if len(shown) < len(by_field):
            hidden = len(by_field) - len(shown)
            shown[HIDDEN_FIELDS] = [f"{hidden} unknown field(s); their names are not shown."]
        cleaned[location] = shown
    return cleaned


RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "example": 1},
}

# The documented error responses: OpenAPI component name and the example's message.
ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", MESSAGES[400]),
    401: ("Unauthorized", "A valid API key is required (Authorization: Bearer <key>)."),
    404: ("NotFound", "No session token with that id."),
    409: ("Conflict", "This user already holds as many session tokens as allowed; delete one first."),
    410: ("Gone", "Events after that cursor are no longer held; read on from the oldest cursor held "
                  "(errors.oldest_cursor) and reconcile."),
    412: ("PreconditionFailed", "The record has changed since that ETag; fetch it again."),
    413: ("PayloadTooLarge", MESSAGES[413]),
    415: ("UnsupportedMediaType", MESSAGES[415]),
    422: ("UnprocessableEntity", MESSAGES[422]),
    429: ("TooManyRequests", "Too many requests; retry after the time in Retry-After."),
    503: ("ServiceUnavailable", "Token storage is temporarily unavailable; retry shortly."),
}
ERROR_EXAMPLE_DETAILS = {
    410: {"oldest_cursor": "1774515600000-0"},
    422: {"json": {"expires_at": ["Must be in the future."]}},
}


def error_body(code: int, message: str, errors: Any = None) -> dict:
    body = {"code": code, "status": HTTP_STATUS_CODES.get(code, "Unknown Error"), "message": message}
    if errors:
        body["errors"] = errors
    return body


class ErrorSchema(SmorestErrorSchema):
    """flask-smorest's error body, as this service answers it: `code`, `status` and
    `message` always, `errors` where there are field-level messages."""

    code = fields.Integer(required=True, metadata={"description": "Error code"})
    status = fields.String(required=True, metadata={"description": "Error name"})
    message = fields.String(required=True, metadata={"description": "Error message"})


class ServiceApi(Api):
    """flask-smorest's Api whose error bodies always carry a message, and whose document
    has one response component per error status, with an example."""

    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app: Flask, *, spec_kwargs: dict | None = None) -> None:
        super().init_app(app, spec_kwargs={"marshmallow_plugin": marshmallow_plugin(), **(spec_kwargs or {})})
        for code, (name, message) in ERROR_RESPONSES.items():
            response: dict[str, Any] = {
                "description": message,
                "schema": self.ERROR_SCHEMA,
                "example": error_body(code, message, ERROR_EXAMPLE_DETAILS.get(code)),
            }
            if code in (429, 503):
                response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
            prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(name, response, lazy=True)

    def handle_http_exception(self, error: HTTPException):
        payload, code, headers = super().handle_http_exception(error)
        message = payload.pop("message", None) or MESSAGES.get(code, error.name)
        errors = without_unshowable_names(payload.pop("errors", None))
        payload = error_body(code, message, errors)
        if code == 405 and getattr(error, "valid_methods", None):
            headers = {**headers, "Allow": ", ".join(error.valid_methods)}
        if code == 413:
            # The rest of the body is never read: close so no stray bytes poison the connection.
            headers = {**headers, "Connection": "close"}
        if isinstance(error, InternalServerError) and error.original_exception is not None:
            log.error(
                "unhandled error",
                extra={"error_type": type(error.original_exception).__name__},
            )
        return payload, code, headers


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(NotFound)
    def not_found(error: NotFound):
        return error_body(404, "No session token with that id."), 404

    @app.errorhandler(PreconditionFailed)
    def precondition_failed(error: PreconditionFailed):
        return (
            error_body(412, "The record has changed since that ETag; fetch it again."),
            412,
            {"ETag": f'"{error.current_version}"'},
        )

    @app.errorhandler(IdempotencyConflict)
    def idempotency_conflict(error: IdempotencyConflict):
        message = "This Idempotency-Key was already used for a different request."
        errors = {"headers": {"Idempotency-Key": ["Already used with another body; use a new key."]}}
        return error_body(422, message, errors), 422

    @app.errorhandler(UserLimitReached)
    def user_limit_reached(error: UserLimitReached):
        return error_body(409, ERROR_RESPONSES[409][1]), 409

    @app.errorhandler(EventsTrimmed)
    def events_trimmed(error: EventsTrimmed):
        return error_body(410, ERROR_RESPONSES[410][1], {"oldest_cursor": error.oldest}), 410

    @app.errorhandler(BadCursor)
    def bad_cursor(error: BadCursor):
        message = "Not an event cursor: use a `cursor` or `next` this store gave, or a time such as 1774515600000-0."
        return error_body(422, MESSAGES[422], {"query": {"after": [message]}}), 422

    @app.errorhandler(AlreadyExpired)
    def already_expired(error: AlreadyExpired):
        return error_body(422, MESSAGES[422], {"json": {"expires_at": ["Must be in the future."]}}), 422

    @app.errorhandler(PageTooDeep)
    def page_too_deep(error: PageTooDeep):
        message = (
            f"A page of the whole store may reach {error.max_depth} records deep (page × limit); "
            "filter by user_id to read further."
        )
        return error_body(422, MESSAGES[422], {"query": {"page": [message]}}), 422

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(error: StoreUnavailable):
        log.warning("redis unavailable", extra={"redis_error": error.kind})
        retry_after = str(current_app.config["SESSIONSVC"].retry_after_seconds)
        return (
            error_body(503, "Token storage is temporarily unavailable; retry shortly."),
            503,
            {"Retry-After": retry_after},
        )

    @app.errorhandler(DecryptionError)
    def decryption_failed(error: DecryptionError):
        log.error(
            "stored token failed to decrypt",
            extra={"record_id": error.record_id, "key_id": error.key_id},
        )
        return error_body(500, "The stored token could not be read."), 500
