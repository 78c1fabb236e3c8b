"""Marshmallow schemas, named after what they describe; the OpenAPI document is built from them."""

from __future__ import annotations

import datetime as dt
import time
from functools import lru_cache
from operator import attrgetter
from typing import Any

from flask import current_app
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_dump, validate, validates, validates_schema
from werkzeug.http import parse_etags

VISIBLE_ASCII_MESSAGE = "Must be printable ASCII without spaces or control characters."


class FullMatch(validate.Regexp):
    """A pattern the whole value must match. Written with ``^...$`` so that the OpenAPI
    document (ECMA regex) says the same; matched with ``fullmatch``, because Python's
    ``$`` would also accept a trailing newline."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


VISIBLE_ASCII = FullMatch(r"^[\x21-\x7e]+$", error=VISIBLE_ASCII_MESSAGE)
EXAMPLE_TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."  # an OpenAPI example, not a secret  # nosec B105


@lru_cache(maxsize=65536)
def format_timestamp(seconds: int) -> str:
    """RFC 3339, UTC, whole seconds. Cached: a page repeats the same few seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Timestamp(fields.Field):
    """RFC 3339 in UTC with whole seconds (``2026-03-26T11:00:00Z``), held as unix seconds.

    Input must carry ``Z`` or an offset; fractional seconds are dropped.
    """

    default_error_messages = {
        "invalid": "Not a valid RFC 3339 timestamp.",
        "naive": "Timestamp must carry 'Z' or a UTC offset.",
    }

    def __init__(self, **kwargs: Any):
        metadata = kwargs.pop("metadata", {})
        # The contract's time; the served document dates it to the present (apidoc.dated_examples).
        metadata.setdefault("example", "2026-03-26T11:00:00Z")
        super().__init__(metadata={"type": "string", "format": "date-time", **metadata}, **kwargs)

    def _serialize(self, value: int | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return format_timestamp(value)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or len(value) > 64:
            raise self.make_error("invalid")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None
        if "T" not in value.upper() or parsed.tzinfo is None:
            raise self.make_error("naive" if parsed.tzinfo is None else "invalid")
        return int(parsed.timestamp() // 1)


def _text(description: str, maximum: int, **kwargs: Any) -> fields.String:
    return fields.String(
        validate=[
            validate.Length(min=1, max=maximum),
            VISIBLE_ASCII,
        ],
        metadata={"description": description, **kwargs.pop("metadata", {})},
        **kwargs,
    )


def UserId(**kwargs: Any) -> fields.String:  # noqa: N802 - a field factory reads like a field
    return _text("The user the token belongs to: 1-128 printable ASCII characters, no spaces.", 128,
                 metadata={"example": "usr_9a2f31"}, **kwargs)


def Token(**kwargs: Any) -> fields.String:  # noqa: N802
    return _text("The session token (JWT or opaque): 1-8192 printable ASCII characters, no spaces.", 8192,
                 metadata={"example": EXAMPLE_TOKEN}, **kwargs)


class _ExpiryRules:
    @validates("expires_at")
    def expires_at_in_range(self, value: int, **kwargs: Any) -> None:
        now = int(time.time())
        if value <= now:
            raise ValidationError("Must be in the future.")
        max_ttl = current_app.config["SESSIONSVC"].max_ttl_seconds
        if value > now + max_ttl:
            raise ValidationError(f"Must be at most {max_ttl} seconds in the future.")


class TokenCreate(_ExpiryRules, Schema):
    """A token to store for a user."""

    user_id = UserId(required=True)
    token = Token(required=True, load_only=True)
    expires_at = Timestamp(required=True, metadata={"description": "When the token stops being valid."})


class TokenRefresh(_ExpiryRules, Schema):
    """A new token and expiry for an existing record; the user cannot change."""

    token = Token(required=True, load_only=True)
    expires_at = Timestamp(required=True, metadata={"description": "When the new token stops being valid."})

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def user_id_is_fixed(self, data: Any, original: Any, **kwargs: Any) -> None:
        # Refused as unknown like any other field (so the document can say so), with the reason.
        if isinstance(original, dict) and "user_id" in original:
            raise ValidationError({"user_id": ["user_id cannot be changed; create a new record instead."]})


class IdempotencyHeader(Schema):
    """Makes a POST safe to retry."""

    class Meta:
        unknown = EXCLUDE

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=[validate.Length(min=1, max=255), VISIBLE_ASCII],
        metadata={
            "description": "A unique value per intended creation (a UUID, say), 1-255 printable ASCII "
            "characters. Repeating the POST with the same key and body within the idempotency window "
            "answers the original 201 again (with `Idempotent-Replayed: true`) and creates nothing; the "
            "same key with a different body is a 422.",
            # No example: Swagger UI's "Try it out" would send it, one key for every reader.
        },
    )


class EntityTags(fields.Field):
    """An ``If-Match`` value, held as the versions it names: None for ``*`` (any).

    Weak or non-numeric tags name no version (strong comparison), so they never match.
    """

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> tuple[int, ...] | None:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        tags = parse_etags(value)
        if tags.star_tag:
            return None
        # werkzeug gives an empty tag ("") as None: it names no version either.
        return tuple(
            sorted(int(tag) for tag in tags.as_set() if tag and tag.isascii() and tag.isdigit() and len(tag) <= 18)
        )


class IfMatchHeader(Schema):
    """Makes a PUT conditional on the version last read."""

    class Meta:
        unknown = EXCLUDE

    if_match = EntityTags(
        data_key="If-Match",
        metadata={
            "type": "string",
            "description": "The `ETag` of the version the change is based on (from GET, POST or PUT). "
            "When the record has been saved since, the PUT is refused 412 and changes nothing. "
            "Optional: without it the PUT applies to whatever version is held. For example `\"42\"`.",
            # No example field: Swagger UI's "Try it out" would send it, and be refused 412.
        },
    )


class UserQuery(Schema):
    """Optionally narrow to one user."""

    class Meta:
        unknown = EXCLUDE

    user_id = UserId()  # absent: every user (no null default, which a query string cannot carry)


class ClearQuery(UserQuery):
    """What to clear: everything, one user's records, or all of one user's but one."""

    keep = fields.String(
        validate=[validate.Length(min=1, max=32), VISIBLE_ASCII],
        metadata={"description": "With `user_id`: the one record of that user to keep (sign out everywhere "
                  "else). It must be a record that user holds, or the answer is 404 and nothing is cleared.",
                  "example": "store_001"},
    )

    @validates_schema
    def keep_needs_user(self, data: dict, **kwargs: Any) -> None:
        if "keep" in data and "user_id" not in data:
            raise ValidationError({"keep": ["Needs user_id: keep names the one record of that user to keep."]})


EVENT_TYPES = ("created", "refreshed", "deleted", "cleared", "evicted", "expired")
# A stream entry id as Redis writes it: milliseconds, a dash, a sequence number (each at
# most 15 digits: whole in the double Lua compares them as).
# With SESSIONSVC_SHARDS = S above 1, the whole store's feed gives cursors that name a
# place in each of the S streams (sessionsvc.store.feed): "s", then S places after dots.
CURSOR = FullMatch(
    r"^(?:[0-9]{1,15}-[0-9]{1,15}|s[0-9a-z]{1,11}(?:\.(?:[0-9a-z]{1,11}(?:_[0-9a-z]{1,13})?)?){2,256})$",
    error="Must be an event cursor such as 1774515600000-0 (a `cursor` or `next` this store gave).",
)
EXAMPLE_CURSOR = "1774515600000-0"
CURSOR_MAX_LENGTH = 256 * 27 + 13


def Cursor(**kwargs: Any) -> fields.String:  # noqa: N802 - a field factory reads like a field
    return fields.String(validate=[validate.Length(min=3, max=CURSOR_MAX_LENGTH), CURSOR], **kwargs)


class EventQuery(UserQuery):
    """Which events: after a cursor, at most `limit`, optionally of one user or one type."""

    after = Cursor(metadata={"description": "Read the events after this cursor (a `cursor` or `next` from an "
                             "earlier answer). Absent: from the oldest event held.", "example": EXAMPLE_CURSOR})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000),
                           metadata={"description": "Events per answer, 1 to 1000."})
    event_type = fields.String(
        data_key="type", validate=validate.OneOf(EVENT_TYPES),
        metadata={"description": "Only events of this type."},
    )


class LastEventIdHeader(Schema):
    """Where an event stream resumes (EventSource sends it when it reconnects)."""

    class Meta:
        unknown = EXCLUDE

    last_event_id = Cursor(
        data_key="Last-Event-ID",
        metadata={"description": "With `Accept: text/event-stream`: resume after this cursor (wins over `after`)."},
    )


class PageQuery(UserQuery):
    """Which page of the listing, most recently saved first."""

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000),
                          metadata={"description": "Page number, from 1."})
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100),
                           metadata={"description": "Records per page, 1 to 100."})


# Response schemas: every field they declare `required` is in every answer of that shape,
# so that the OpenAPI document (and a client generated from it) says so.


@lru_cache(maxsize=1024)
def attribute_reader(attr: str) -> attrgetter:
    """The reader of an attribute path (``record.id``), made once per path."""
    return attrgetter(attr)


class ObjectSchema(Schema):
    """Dumps an object (a store Record, a vault Revealed) by reading attributes, dotted
    paths included: marshmallow's default reader tries `record["id"]` first, which a
    Record (a named tuple) refuses with an exception, for every field of every record.
    A dict (an answer built in a view) is read as marshmallow reads it."""

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if isinstance(obj, dict):
            return super().get_attribute(obj, attr, default)
        try:
            return attribute_reader(attr)(obj)
        except AttributeError:
            return default


class TokenSummary(ObjectSchema):
    """A stored token as lists show it: never the token itself. Dumps a store Record."""

    id = fields.String(required=True, metadata={"example": "store_001"})
    user_id = fields.String(required=True, metadata={"example": "usr_9a2f31"})
    token_preview = fields.String(required=True, metadata={"example": "eyJhbGci...Q3Yk"})
    expires_at = Timestamp(required=True)
    is_valid = fields.Boolean(required=True)
    saved_at = Timestamp(required=True, metadata={"example": "2026-03-26T08:00:00Z"})


class TokenCreated(TokenSummary):
    """A token just stored. Dumps a store Record."""

    created_at = Timestamp(required=True, metadata={"example": "2026-03-26T09:20:00Z"})


class TokenDetail(ObjectSchema):
    """A stored token with its full value. Dumps a vault Revealed (record and token)."""

    id = fields.String(required=True, attribute="record.id", metadata={"example": "store_001"})
    user_id = fields.String(required=True, attribute="record.user_id", metadata={"example": "usr_9a2f31"})
    token = fields.String(required=True, metadata={"example": EXAMPLE_TOKEN})
    expires_at = Timestamp(required=True, attribute="record.expires_at")
    is_valid = fields.Boolean(required=True, attribute="record.is_valid")
    saved_at = Timestamp(required=True, attribute="record.saved_at", metadata={"example": "2026-03-26T08:00:00Z"})


class CurrentToken(ObjectSchema):
    """The most recently saved token still held. Dumps a vault Revealed."""

    token = fields.String(required=True, metadata={"example": EXAMPLE_TOKEN})
    expires_at = Timestamp(required=True, attribute="record.expires_at")
    is_valid = fields.Boolean(required=True, attribute="record.is_valid")


class Validity(ObjectSchema):
    """Whether the current token is still valid. Dumps a store Record (or the view's
    answer when no token is held)."""

    is_valid = fields.Boolean(required=True)
    expires_at = Timestamp(required=True, allow_none=True)
    seconds_remaining = fields.Integer(required=True, metadata={"example": 3540})


class Pagination(Schema):
    page = fields.Integer(required=True, metadata={"example": 1})
    limit = fields.Integer(required=True, metadata={"example": 20})
    total = fields.Integer(required=True, metadata={"example": 1})


class Summaries(fields.List):
    """A list of TokenSummary, as the OpenAPI document says, rendered here record by record
    rather than by marshmallow field by field: a bypass kept because on a full page it buys
    far more listing throughput than the project asks of a bypass (docs/benchmarks.md).
    tests/test_schemas.py holds the render to what `TokenSummary(many=True).dump` gives."""

    def __init__(self, **kwargs: Any):
        super().__init__(fields.Nested(TokenSummary), **kwargs)

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> list[dict]:
        return [
            {
                "id": record.id,
                "user_id": record.user_id,
                "token_preview": record.token_preview,
                "expires_at": format_timestamp(record.expires_at),
                "is_valid": record.is_valid,
                "saved_at": format_timestamp(record.saved_at),
            }
            for record in value
        ]


class TokenPage(Schema):
    data = Summaries(required=True)
    pagination = fields.Nested(Pagination, required=True)


class Cleared(Schema):
    cleared = fields.Boolean(required=True, metadata={"example": True})
    message = fields.String(required=True, metadata={"example": "All session tokens cleared from secure storage"})
    count = fields.Integer(required=True, metadata={"description": "How many live records were cleared.", "example": 1})


class SessionEvent(ObjectSchema):
    """One change to the store, as its event stream tells it. Dumps a store Event; fields
    that do not apply are absent (never null)."""

    cursor = fields.String(required=True, metadata={
        "description": "The event's place in the stream: pass it as `after` (or Last-Event-ID) to read on.",
        "example": EXAMPLE_CURSOR})
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES), metadata={"example": "created"})
    at = Timestamp(required=True, metadata={"description": "When it happened (Redis's clock)."})
    id = fields.String(metadata={"description": "The record's id; absent on `cleared`.", "example": "store_001"})
    user_id = fields.String(metadata={"description": "The record's user; on `cleared`, the user whose records were "
                                      "cleared, absent when the whole store was.", "example": "usr_9a2f31"})
    expires_at = Timestamp(metadata={"description": "The record's expiry (the new one on `refreshed`); absent on "
                                     "`cleared`."})
    count = fields.Integer(metadata={"description": "On `cleared`: how many live records were cleared.",
                                     "example": 1})
    kept = fields.String(metadata={"description": "On `cleared` by sign-out-everywhere-else (`keep`): the one "
                                   "record of the user that was kept.", "example": "store_001"})

    @post_dump
    def without_absent_fields(self, data: dict, **kwargs: Any) -> dict:
        return {name: value for name, value in data.items() if value is not None}


class SessionEventPage(Schema):
    data = fields.List(fields.Nested(SessionEvent), required=True, metadata={"description": "Oldest first."})
    next = fields.String(required=True, metadata={
        "description": "Pass as `after` to read on: past every event read, also those a filter passed over.",
        "example": EXAMPLE_CURSOR})


class Deleted(Schema):
    deleted = fields.Boolean(required=True, metadata={"example": True})
    id = fields.String(required=True, metadata={"example": "store_001"})


class Health(Schema):
    """The process answers."""

    status = fields.String(required=True, metadata={"example": "ok"})


class Readiness(Schema):
    """Whether this instance can serve: Redis answers PING and holds the store's scripts."""

    status = fields.String(required=True, metadata={"description": "`ok` or `unavailable`.", "example": "ok"})
    redis = fields.String(
        required=True,
        metadata={"description": "`ok`, or the kind of failure (`connection`, `timeout`, ...).", "example": "ok"}
    )
    scripts = fields.String(
        required=True,
        metadata={"description": "`loaded`, `unknown` (Redis did not answer) or the kind of failure.",
                  "example": "loaded"}
    )
    encryption_key = fields.String(
        required=True,
        metadata={"description": "`ok`; `rotate` when the encrypting key has sealed more tokens than "
                  "SESSIONSVC_ROTATE_KEY_AFTER (AES-GCM's random-nonce budget: add a new key and rotate; "
                  "still ready); `unknown` when Redis did not answer.", "example": "ok"}
    )
