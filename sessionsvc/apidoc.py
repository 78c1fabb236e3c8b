"""What the OpenAPI document says beyond the schemas: the contract's examples, documented
headers and links, and the record id's shape (data the views in `api.py` use); and the two
things about it that depend on the app's settings or the time: the expiry rule, and the
examples' dates."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, resolver
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask_smorest.pagination import PaginationMetadataSchema

from .schemas import EXAMPLE_TOKEN, TokenCreate, TokenRefresh, format_timestamp

CLEARED_MESSAGE = "All session tokens cleared from secure storage"

# What the contract shows for each operation, served as the OpenAPI examples. Their times
# are those of the contract's story, told as of EXAMPLES_WRITTEN_AT (see `dated_examples`).
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
    "events": {
        "data": [
            {"cursor": "1774516800000-0", "type": "created", "at": "2026-03-26T09:20:00Z", "id": "store_002",
             "user_id": "usr_9a2f31", "expires_at": "2026-03-26T11:00:00Z"},
            {"cursor": "1774516801000-0", "type": "refreshed", "at": "2026-03-26T09:20:01Z", "id": "store_001",
             "user_id": "usr_9a2f31", "expires_at": "2026-03-26T13:00:00Z"},
            {"cursor": "1774516801000-1", "type": "cleared", "at": "2026-03-26T09:20:01Z", "user_id": "usr_7c01d4",
             "count": 2},
        ],
        "next": "1774516801000-1",
    },
    "deleted": {"deleted": True, "id": "store_001"},
}
# The events endpoint's other answer: Server-Sent Events (sessionsvc.eventstream).
EVENT_STREAM_CONTENT = {
    "schema": {
        "type": "string",
        "description": "Server-Sent Events: per event `id:` (its cursor), `event:` (its type) and `data:` (the "
        "event as JSON, as in the JSON answer); comments (`: heartbeat`) while nothing happens; an `id:` line "
        "alone moves the resume point past events a filter passed over. Resume with `Last-Event-ID`. The "
        "response ends after SESSIONSVC_EVENTS_STREAM_SECONDS; reconnect to go on.",
    },
    "example": "retry: 1000\n\nid: 1774516800000-0\nevent: created\ndata: {\"cursor\":\"1774516800000-0\","
    "\"type\":\"created\",\"at\":\"2026-03-26T09:20:00Z\",\"id\":\"store_002\",\"user_id\":\"usr_9a2f31\","
    "\"expires_at\":\"2026-03-26T11:00:00Z\"}\n\n: heartbeat\n\n",
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


def component_name(schema: Any) -> str | None:
    """apispec's name for a schema's component, except flask-smorest's pagination metadata
    (for its `paginate`, unused here: the listing pages in the body). None keeps it out
    of the components, inline in the header flask-smorest registers for it, which no
    operation references and so is never served."""
    if resolve_schema_cls(schema) is PaginationMetadataSchema:
        return None
    return resolver(schema)


def marshmallow_plugin() -> MarshmallowPlugin:
    """apispec's marshmallow plugin, naming components by `component_name`."""
    return MarshmallowPlugin(schema_name_resolver=component_name)


# How a record id is documented: what ids look like (any other segment is simply a 404).
# `store.format_id` pads the number to at least 3 digits; `store.parse_id` takes at most 18.
RECORD_ID_SCHEMA = {
    "type": "string",
    "minLength": len("store_") + 3,
    "maxLength": len("store_") + 18,
    "pattern": "^store_[0-9]{3,18}$",
    "example": "store_001",
}


# The moment the contract's examples are told from: a token saved at 08:00 and another
# created at 09:20, expiring at 11:00 and refreshed to 13:00. The document is built, and
# openapi.json committed, as of that moment; served, it is dated to the present.
EXAMPLES_WRITTEN_AT = "2026-03-26T09:20:00Z"
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _seconds(timestamp: str) -> int:
    return calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def dated_examples(document: Any, now: float, max_ttl_seconds: int) -> Any:
    """``document`` (the OpenAPI document, or any JSON value) with every timestamp in it,
    all of them example times, moved by the whole minutes from EXAMPLES_WRITTEN_AT to
    ``now``, and none later than ``now`` plus the longest expiry the service accepts.

    So the request examples Swagger UI's "Try it out" sends are accepted as they are
    (their expiries are in the future and within the maximum), and the response examples
    tell the same story. At EXAMPLES_WRITTEN_AT the document comes back unchanged."""
    moment = int(now) // 60 * 60
    shift = moment - _seconds(EXAMPLES_WRITTEN_AT)
    latest = moment + max_ttl_seconds

    def dated(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: dated(item) for key, item in value.items()}
        if isinstance(value, list):
            return [dated(item) for item in value]
        if isinstance(value, str) and TIMESTAMP.fullmatch(value):
            return format_timestamp(min(_seconds(value) + shift, latest))
        return value

    return dated(document)


DURATION_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration_text(seconds: int) -> str:
    """A number of seconds in its largest whole unit: 2592000 as "30 days", 3600 as "1 hour"."""
    unit, size = next((unit, size) for unit, size in DURATION_UNITS if seconds % size == 0)
    count = seconds // size
    return f"{count} {unit}" + ("" if count == 1 else "s")


def state_expiry_rule(spec: APISpec, max_ttl_seconds: int) -> None:
    """Say in the request bodies' ``expires_at`` descriptions which expiries are accepted:
    the maximum is a setting (SESSIONSVC_MAX_TTL_SECONDS), so it is written in when the
    app is built, after the schemas have been registered."""
    rule = f" Must be in the future, and at most {duration_text(max_ttl_seconds)} ahead."
    for schema in (TokenCreate, TokenRefresh):
        spec.components.schemas[schema.__name__]["properties"]["expires_at"]["description"] += rule
