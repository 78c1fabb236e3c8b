"""What the store hands back and what it raises: records, reports, record ids and the
domain errors the API maps to HTTP (``sessionsvc.errors``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class NotFound(Exception):
    """No record with that id is held."""


class NumberInUse(Exception):
    """A reserved record number is already taken (a failover lost part of the counter)."""


class PreconditionFailed(Exception):
    """The record changed since the version the caller named."""

    def __init__(self, current_version: int):
        super().__init__("record has changed")
        self.current_version = current_version


class AlreadyExpired(Exception):
    """The record would be dead (expires_at + retention) by Redis's clock before it is stored."""


class IdempotencyConflict(Exception):
    """The idempotency key was already used, within its window, for a different request."""


class UserLimitReached(Exception):
    """The user holds as many records as the per-user limit allows (policy ``reject``)."""


class EventsTrimmed(Exception):
    """The cursor is older than the oldest event the stream still holds: events after it
    may have been trimmed away. ``oldest`` is the oldest cursor held."""

    def __init__(self, oldest: str):
        super().__init__("events trimmed")
        self.oldest = oldest


class PageTooDeep(Exception):
    """A page of the whole sharded store reaching deeper than a global page may read."""

    def __init__(self, max_depth: int):
        super().__init__(f"a page of the whole store may reach {max_depth} records deep")
        self.max_depth = max_depth


class ShardCountMismatch(Exception):
    """The store was created with another number of shards than this process is configured with."""

    def __init__(self, configured: int, recorded: int):
        super().__init__(f"configured with {configured} shards, the store has {recorded}")
        self.configured = configured
        self.recorded = recorded


class StoreUnavailable(Exception):
    """Redis did not answer in time or refused the command; the kind names the reason."""

    def __init__(self, kind: str):
        super().__init__(f"store unavailable: {kind}")
        self.kind = kind


class Record(NamedTuple):
    """One record as Redis returned it: an immutable snapshot. A named tuple rather than a
    frozen dataclass because it is built for every record a request touches (20 per page),
    and a tuple is much quicker to build: one allocation, where a frozen dataclass sets each
    field through object.__setattr__."""

    number: int
    user_id: str
    token_preview: str
    expires_at: int
    saved_at: int
    created_at: int
    version: int
    is_valid: bool
    seconds_remaining: int
    reveal_count: int = 0
    last_revealed_at: int | None = None
    sealed_token: bytes | None = None
    replayed: bool = False  # a snapshot answered again for a repeated idempotent create

    @property
    def id(self) -> str:
        return format_id(self.number)


class Listed(NamedTuple):
    """One record as a page lists it: the fields a listing shows, and its save number
    (``version``), which orders a page of the whole sharded store. A page's script reads
    only these from Redis (six fields of a record's nine)."""

    number: int
    user_id: str
    token_preview: str
    expires_at: int
    saved_at: int
    version: int
    is_valid: bool

    @property
    def id(self) -> str:
        return format_id(self.number)


class Event(NamedTuple):
    """One entry of the store's event stream. ``cursor`` is its stream entry id (the
    Redis time in ms, a dash, a sequence number); ``at`` is that time in whole seconds.
    ``number`` is absent on ``cleared``, ``user_id`` on a whole-store clear, ``count`` on
    every other type; ``kept_number`` is the record a clear of one user kept, if any."""

    cursor: str
    type: str
    at: int
    number: int | None = None
    user_id: str | None = None
    expires_at: int | None = None
    count: int | None = None
    kept_number: int | None = None

    @property
    def id(self) -> str | None:
        return None if self.number is None else format_id(self.number)

    @property
    def kept(self) -> str | None:
        return None if self.kept_number is None else format_id(self.kept_number)


class EventPage(NamedTuple):
    """Events oldest first, and the cursor to read on from (past every entry read, also
    those a filter passed over)."""

    events: list[Event]
    next: str


@dataclass(frozen=True, slots=True)
class Census:
    """What a metrics scrape reads: cheap at any size."""

    records: int
    pruned: int
    encryptions: dict[str, int]  # tokens sealed so far, per key id (store-wide)
    sealed_heads: list[bytes]  # the first bytes of a uniform sample of sealed tokens


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What check-index found (and, when repairing, fixed)."""

    pruned: int = 0
    dangling_entries: int = 0
    unindexed_records: int = 0
    records_without_ttl: int = 0
    stale_records: int = 0

    @property
    def problems(self) -> int:
        return self.dangling_entries + self.unindexed_records + self.records_without_ttl + self.stale_records


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """What makes a create idempotent: the client's key (already scoped to the client)
    and keyed digests of the request, one per encryption key, the first one stored."""

    key: str
    digests: tuple[str, ...]

    @property
    def key_hash(self) -> str:
        """What names the key in Redis (``{P}:idem:<key hash>``): never the key itself."""
        return hashlib.sha256(self.key.encode("utf-8")).hexdigest()


# Called after every store operation: (operation, seconds, error kind or None).
Observer = Callable[[str, float, "str | None"], None]


def format_id(number: int) -> str:
    return f"store_{number:03d}"


def parse_id(record_id: str) -> int | None:
    """The record number of a canonical id, or None (unknown ids never reach Redis)."""
    if not record_id.startswith("store_"):
        return None
    digits = record_id[6:]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        return None
    number = int(digits)
    return number if number > 0 and format_id(number) == record_id else None


class BadCursor(Exception):
    """A string that is not an event cursor (the API's validation refuses it first)."""

    def __init__(self, shards: int):
        super().__init__("bad cursor")
        self.shards = shards
