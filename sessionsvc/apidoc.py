"""What the OpenAPI document says beyond the schemas: the contract's examples, documented
headers and links, and the record id's shape. Data only; the views in `api.py` use it."""

from __future__ import annotations

from .schemas import EXAMPLE_TOKEN

CLEARED_MESSAGE = "All session tokens cleared from secure storage"

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


# How a record id is documented: what ids look like (any other segment is simply a 404).
# `store.format_id` pads the number to at least 3 digits; `store.parse_id` takes at most 18.
RECORD_ID_SCHEMA = {
    "type": "string",
    "minLength": len("store_") + 3,
    "maxLength": len("store_") + 18,
    "pattern": "^store_[0-9]{3,18}$",
    "example": "store_001",
}
