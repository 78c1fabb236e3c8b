"""The token vault: what the API asks for, in terms of the store and the cipher.

Views, probes and operator commands call this and nothing below it. It seals tokens before they reach the store, opens
them only when a full token is to be returned, and computes the clear-text preview.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from .crypto import Cipher, DecryptionError
from .store import (
    EventPage,
    IdempotencyClaim,
    IndexReport,
    Listed,
    NotFound,
    NumberInUse,
    Record,
    ShardCountMismatch,
    Store,
    StoreUnavailable,
    format_id,
    parse_id,
)

log = logging.getLogger("sessionsvc")


def token_preview(token: str) -> str:
    """What a list may show of a token: never enough to use it."""
    if len(token) >= 24:
        return f"{token[:8]}...{token[-4:]}"
    if len(token) >= 12:
        return f"{token[:4]}..."
    return "..."


@dataclass(frozen=True, slots=True)
class Revealed:
    """A record together with its opened token and that token's fingerprint (for logs)."""

    record: Record
    token: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Stats:
    """Exact counts from a full pass over the records (an operator command, not a scrape)."""

    records: int
    by_user: Counter[str]
    by_key_id: Counter[str]


@dataclass(frozen=True, slots=True)
class KeyCensus:
    """Cheap counts for a metrics scrape."""

    records: int
    pruned: int
    by_key_id: dict[str, int]  # exact up to the sample size, estimated above
    encryptions: dict[str, int]  # tokens sealed so far per key id: the nonce budget spent


@dataclass(frozen=True, slots=True)
class RotationReport:
    key_id: str  # the encrypting key, the one every record should now be under
    key_ids: tuple[str, ...]  # every configured key
    before: dict[str, int]
    after: dict[str, int]
    resealed: int
    unreadable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """Whether this process can serve: Redis's answer to PING ("ok" or the kind of
    failure), whether it holds the store's scripts ("loaded", the kind of failure, or
    "unknown" when Redis did not answer), and how many tokens the encrypting key
    `key_id` has sealed (None when Redis did not say)."""

    redis: str
    scripts: str
    key_id: str
    encryptions: int | None = None

    @property
    def ready(self) -> bool:
        return self.redis == "ok" and self.scripts == "loaded"


class TokenVault:
    """`layout_check` compares the store's number of shards with this process's (raises
    ShardCountMismatch, or StoreUnavailable when Redis does not answer): run once, before
    the first write and by readiness, until Redis has answered it."""

    def __init__(self, store: Store, cipher: Cipher, layout_check: Callable[[], None] | None = None):
        self.store = store
        self.cipher = cipher
        self._layout_check = layout_check

    def check_layout(self) -> bool:
        """Whether the store's layout is known to match (False: Redis did not answer yet)."""
        check = self._layout_check
        if check is None:
            return True
        try:
            check()
        except StoreUnavailable:
            return False
        self._layout_check = None
        return True

    def _writable(self) -> None:
        """Refuse to write into a store of another layout (found when Redis answers at last)."""
        if self._layout_check is None:
            return
        try:
            layout_checked = self.check_layout()
        except ShardCountMismatch as error:
            log.error("SESSIONSVC_SHARDS differs from the store's; refusing to write",
                      extra={"configured_shards": error.configured, "store_shards": error.recorded})
            raise StoreUnavailable("shard_count") from None
        if not layout_checked:
            raise StoreUnavailable("connection")

    def _number(self, record_id: str) -> int:
        number = parse_id(record_id)
        if number is None:
            raise NotFound(record_id)
        return number

    def _open(self, record: Record) -> Revealed:
        if record.sealed_token is None:  # fail closed, even under `python -O`
            raise DecryptionError("?", record.id)
        token = self.cipher.open(record.sealed_token, record.id, record.user_id)
        return Revealed(record, token, self.cipher.fingerprint(token))

    def save(
        self, user_id: str, token: str, expires_at: int, idempotency_key: str | None = None, client: str = ""
    ) -> Record:
        """Store a token. With an idempotency key (scoped to the calling `client`), a repeat
        of the same request answers the first one's record (``replayed``) instead."""
        claim = None
        if idempotency_key is not None:
            digests = self.cipher.request_digests(user_id, token, str(expires_at))
            claim = IdempotencyClaim(f"{client}\x00{idempotency_key}", digests)
        self._writable()
        for _ in range(3):
            number = self.store.reserve_number(user_id)
            sealed = self.cipher.seal(token, format_id(number), user_id)
            try:
                return self.store.create(number, user_id, sealed, token_preview(token), expires_at, claim)
            except NumberInUse:
                continue  # a failover lost the counter's last blocks; the store took a new one
        raise StoreUnavailable("number_in_use")

    def save_many(self, entries: Sequence[tuple[str, str, int]]) -> Sequence[int]:
        """Bulk load (user id, token, expires_at) entries through the store's own create
        script, pipelined; returns their record numbers. No input checks: trusted callers."""
        self._writable()
        numbers = self.store.reserve_numbers([user_id for user_id, _, _ in entries])
        rows = (
            (number, user_id, self.cipher.seal(token, format_id(number), user_id), token_preview(token), expires_at)
            for number, (user_id, token, expires_at) in zip(numbers, entries, strict=True)
        )
        self.store.create_many(rows)
        return numbers

    def refresh(
        self,
        record_id: str,
        token: str,
        expires_at: int,
        expected_versions: Collection[int] | None = None,
    ) -> Record:
        number = self._number(record_id)
        self._writable()
        user_id = self.store.owner(number)
        if user_id is None:
            raise NotFound(record_id)
        sealed = self.cipher.seal(token, record_id, user_id)
        return self.store.refresh(number, user_id, sealed, token_preview(token), expires_at, expected_versions)

    def reveal(self, record_id: str) -> Revealed:
        record = self.store.get(self._number(record_id), reveal=True)
        if record is None:
            raise NotFound(record_id)
        return self._open(record)

    def current(self, user_id: str | None = None) -> Revealed | None:
        record = self.store.current(user_id, reveal=True)
        return None if record is None else self._open(record)

    def validity(self, user_id: str | None = None) -> Record | None:
        return self.store.current(user_id)

    def page(self, page: int, limit: int, user_id: str | None = None) -> tuple[int, list[Listed]]:
        return self.store.page((page - 1) * limit, limit, user_id)

    def delete(self, record_id: str) -> None:
        number = self._number(record_id)
        self._writable()
        if not self.store.delete(number):
            raise NotFound(record_id)

    def clear(self, user_id: str | None = None, keep: str | None = None) -> int:
        """Clear every record, or one user's; with `keep` (a record id of that user), all
        of that user's but that one. NotFound when `keep` is not a held record of the user."""
        self._writable()
        return self.store.clear(user_id, None if keep is None else self._number(keep))

    def events(
        self, after: str | None = None, limit: int = 100, user_id: str | None = None, event_type: str | None = None
    ) -> EventPage:
        return self.store.events(after, limit, user_id, event_type)

    def wait_for_events(self, after: str, timeout_ms: int, user_id: str | None = None) -> bool:
        return self.store.wait_for_events(after, timeout_ms, user_id)

    def reclaim(self) -> None:
        """Free what a clear left behind; run after the response, so failures only log."""
        try:
            self.store.reclaim()
        except StoreUnavailable as error:
            log.warning("reclaim after clear postponed", extra={"redis_error": error.kind})
    def stats(self) -> Stats:
        by_user: Counter[str] = Counter()
        by_key_id: Counter[str] = Counter()
        for _, user_id, sealed in self.store.scan():
            by_user[user_id] += 1
            by_key_id[self.cipher.key_id_of(sealed)] += 1
        return Stats(records=sum(by_user.values()), by_user=by_user, by_key_id=by_key_id)

    def census(self) -> KeyCensus:
        """Live records, entries pruned so far, and records per key id scaled up from a
        uniform sample (exact while the store holds no more records than the sample)."""
        census = self.store.census()
        sampled = Counter(self.cipher.key_id_of(head) for head in census.sealed_heads)
        scale = census.records / len(census.sealed_heads) if census.sealed_heads else 0
        by_key_id = {key_id: round(count * scale) for key_id, count in sampled.items()}
        return KeyCensus(
            records=census.records, pruned=census.pruned, by_key_id=by_key_id, encryptions=census.encryptions
        )

    def readiness(self) -> ReadinessCheck:
        """PING Redis within the client timeout, make sure it holds the store's scripts
        (loading any it lost, e.g. after a restart), and read the encrypting key's count."""
        key_id = self.cipher.current_key_id
        try:
            self.store.ping()
        except StoreUnavailable as error:
            return ReadinessCheck(redis=error.kind, scripts="unknown", key_id=key_id)
        try:
            self.store.load_scripts()
            self._writable()
        except StoreUnavailable as error:
            return ReadinessCheck(redis="ok", scripts=error.kind, key_id=key_id)
        try:
            encryptions = self.encryptions()
        except StoreUnavailable:
            encryptions = None
        return ReadinessCheck(redis="ok", scripts="loaded", key_id=key_id, encryptions=encryptions)

    def check_index(self, repair: bool = False) -> IndexReport:
        """The store's index checked against its records (and, with `repair`, fixed)."""
        return self.store.check_index(repair=repair)

    def encryptions(self) -> int:
        """Tokens sealed so far under the encrypting key (store-wide): its nonce budget spent."""
        return self.store.encryptions(self.cipher.current_key_id)

    def rotate_keys(self) -> RotationReport:
        """Re-seal every record not under the first key; repeats until none is left.

        A record that does not decrypt (its key was removed, or it was tampered with) is
        left exactly as it is and named in the report: rotation never destroys data.
        """
        before = dict(self.stats().by_key_id)
        resealed = 0
        unreadable: set[str] = set()
        for _ in range(10):
            pending = 0
            for number, user_id, sealed in self.store.scan():
                record_id = format_id(number)
                if not self.cipher.needs_rotation(sealed) or record_id in unreadable:
                    continue
                pending += 1
                try:
                    token = self.cipher.open(sealed, record_id, user_id)
                except DecryptionError:
                    unreadable.add(record_id)
                    continue
                if self.store.reseal(number, sealed, self.cipher.seal(token, record_id, user_id)):
                    resealed += 1
            if pending == 0:
                break
        return RotationReport(
            key_id=self.cipher.current_key_id,
            key_ids=tuple(self.cipher.key_ids),
            before=before, after=dict(self.stats().by_key_id), resealed=resealed, unreadable=tuple(sorted(unreadable))
        )
