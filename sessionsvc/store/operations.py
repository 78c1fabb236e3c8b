"""The token store: the operations that serve requests (see *Commands per operation* in
``sessionsvc.store``). Running scripts comes from ``runner``, the operations for operators
and monitoring from ``maintenance``, record numbers from ``ids``."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from .events import StoreEvents
from .ids import IdBlocks, OwnerCache
from .maintenance import StoreMaintenance
from .records import (
    AlreadyExpired,
    IdempotencyClaim,
    IdempotencyConflict,
    Listed,
    NotFound,
    NumberInUse,
    Observer,
    PreconditionFailed,
    Record,
    StoreUnavailable,
    UserLimitReached,
    format_id,
)
from .scripts import NUMBER_IN_USE, ClearReply, CreateReply, ReadReply, RefreshReply

log = logging.getLogger("sessionsvc")

PRUNE_BATCH = 256
BULK_BATCH = 1000


class TokenStore(StoreEvents, StoreMaintenance):
    """Records and their indexes in one Redis (or Cluster slot), under one key prefix.

    ``replicas``: a client whose read-only scripts may be served by replicas (None: every
    read goes to the primary). ``min_replicas_ack``: writes wait for that many replicas to
    acknowledge them (WAIT) and fail as unavailable when they do not in time.
    ``max_tokens_per_user`` (0: no limit) and ``user_limit_policy`` (``evict_oldest`` or
    ``reject``): what create does when the user would hold more. ``events_maxlen``: the
    event stream's approximate bound.
    """

    def __init__(
        self,
        client: Any,
        key_prefix: str = "sessionsvc",
        retention_seconds: int = 86400,
        *,
        observe: Observer | None = None,
        replicas: Any = None,
        min_replicas_ack: int = 0,
        replica_ack_timeout_ms: int = 500,
        idempotency_seconds: int = 86400,
        max_tokens_per_user: int = 0,
        user_limit_policy: str = "evict_oldest",
        events_maxlen: int = 100_000,
    ):
        super().__init__(client, key_prefix, observe=observe, replicas=replicas, min_replicas_ack=min_replicas_ack,
                         replica_ack_timeout_ms=replica_ack_timeout_ms)
        self.retention_ms = retention_seconds * 1000
        self.idempotency_ms = max(1, idempotency_seconds) * 1000
        self.max_tokens_per_user = max_tokens_per_user
        self.user_limit_policy = user_limit_policy
        self.events_maxlen = max(1, events_maxlen)
        self._ids = IdBlocks(self._fetch_block)
        self._owners = OwnerCache()

    # --- ids -----------------------------------------------------------------------

    def reserve_number(self, user_id: str | None = None) -> int:
        """A record number no other caller will ever get (ids are allocated in blocks).
        `user_id` is the record's owner: it places the record in a sharded store (see
        ``shards``), and a single store has no use for it."""
        return self._ids.reserve()

    def _fetch_block(self, size: int) -> Any:
        key = self.root + ":ids"
        if self.min_replicas_ack:
            return self._attempt("reserve", lambda: self._acknowledged(lambda pipe: pipe.incrby(key, size)))
        return self._attempt("reserve", lambda: self.client.incrby(key, size), retry=True)

    def reserve_numbers(self, user_ids: Sequence[str]) -> Sequence[int]:
        """Record numbers for records of these users, in order, in one INCRBY (for bulk loads)."""
        count = len(user_ids)
        end = int(self._attempt("reserve", lambda: self.client.incrby(self.root + ":ids", count), any_error=True))
        return range(end - count + 1, end + 1)

    # --- records -------------------------------------------------------------------

    def _held(self, now_ms: int, fields: list, sealed: bytes | None = None) -> Record:
        """A record as Redis returned it; its owner is remembered for later refreshes."""
        record = self._record(now_ms, fields, sealed)
        self._owners.remember(record.number, record.user_id)
        return record

    @staticmethod
    def _record(now_ms: int, fields: list, sealed: bytes | None = None) -> Record:
        number, user, preview, expires, saved, created, version, reveals, revealed = fields
        expires = int(expires)
        remaining_ms = expires * 1000 - now_ms
        return Record(
            number=int(number),
            user_id=user.decode("ascii"),
            token_preview=preview.decode("ascii"),
            expires_at=expires,
            saved_at=int(saved),
            created_at=int(created),
            version=int(version),
            is_valid=remaining_ms > 0,
            seconds_remaining=max(0, remaining_ms // 1000),
            reveal_count=int(reveals or 0),
            last_revealed_at=int(revealed) if revealed else None,
            sealed_token=sealed,
        )

    def _listed(self, now_ms: int, fields: list) -> Listed:
        """A record as a page's script returned it; its owner is remembered for later refreshes."""
        number, user, preview, expires, saved, version = fields
        expires = int(expires)
        listed = Listed(
            number=int(number),
            user_id=user.decode("ascii"),
            token_preview=preview.decode("ascii"),
            expires_at=expires,
            saved_at=int(saved),
            version=int(version),
            is_valid=expires * 1000 > now_ms,
        )
        self._owners.remember(listed.number, listed.user_id)
        return listed

    # --- operations ----------------------------------------------------------------

    def create(
        self,
        number: int,
        user_id: str,
        sealed: bytes,
        preview: str,
        expires_at: int,
        idempotency: IdempotencyClaim | None = None,
        save_number: int | None = None,
    ) -> Record:
        """Store a new record under a reserved number. With an idempotency claim, a key
        already used for the same request answers the record it created then
        (``replayed``) and stores nothing; for another request it raises
        IdempotencyConflict. NumberInUse when another record holds the number already:
        possible only after a failover lost the counter's last blocks. Over the per-user
        limit it evicts the user's least recently saved records, or raises
        UserLimitReached (policy ``reject``). `save_number`: the save's place in the order
        of saves, given by a sharded store (None: this store's own counter)."""
        key_hash, digests = "", ""
        if idempotency is not None:
            key_hash = idempotency.key_hash
            digests = " ".join(idempotency.digests)
        try:
            reply = self._run(
                "create",
                *self._create_args(number, user_id, sealed, preview, expires_at, key_hash, digests, save_number),
                retry=idempotency is not None,
            )
        except ResponseError as error:
            if NUMBER_IN_USE not in str(error):
                raise
            self._ids.forget()
            raise NumberInUse(format_id(number)) from None
        if reply[0] == CreateReply.IDEMPOTENCY_CONFLICT:
            raise IdempotencyConflict()
        if reply[0] == CreateReply.ALREADY_EXPIRED:
            raise AlreadyExpired()
        if reply[0] == CreateReply.USER_LIMIT:
            raise UserLimitReached()
        if reply[0] == CreateReply.CATCHING_UP:
            raise StoreUnavailable("catching_up")
        record = self._held(reply[1], reply[2])
        return record._replace(replayed=True) if reply[0] == CreateReply.REPLAYED else record

    def _create_args(
        self, number: int, user_id: str, sealed: bytes, preview: str, expires_at: int,
        key_hash: str = "", digests: str = "", save_number: int | None = None,
    ) -> tuple:
        """The create script's ARGV after the root (see scripts.py)."""
        return (number, user_id, sealed, preview, expires_at, self.retention_ms, PRUNE_BATCH,
                key_hash, digests, self.idempotency_ms, self.max_tokens_per_user, self.user_limit_policy,
                self.events_maxlen, "" if save_number is None else save_number)

    def create_many(
        self, rows: Iterable[tuple[int, str, bytes, str, int]], batch: int = BULK_BATCH,
        save_numbers: Iterable[int | None] | None = None,
    ) -> int:
        """Bulk load: the create script for each (number, user id, sealed, preview,
        expires_at), pipelined in batches (one round-trip per batch). Returns the count.
        `save_numbers`: one per row, given by a sharded store (None: this store's counter)."""
        count = 0
        self.load_scripts()
        pipe = self.client.pipeline(transaction=False)
        numbers = iter(save_numbers) if save_numbers is not None else itertools.repeat(None)
        for (number, user_id, sealed, preview, expires_at), save_number in zip(rows, numbers, strict=False):
            self._queue(pipe, "create", *self._create_args(number, user_id, sealed, preview, expires_at,
                                                           save_number=save_number))
            count += 1
            if count % batch == 0:
                pipe.execute()
        pipe.execute()
        return count

    def owner(self, number: int) -> str | None:
        """The user id of a held record: from this process's cache, else its script."""
        cached = self._owners.get(number)
        if cached is not None:
            return cached
        user = self._run("owner", number, retry=True)
        if not user:
            return None
        self._owners.remember(number, user.decode("ascii"))
        return user.decode("ascii")

    def refresh(
        self,
        number: int,
        user_id: str,
        sealed: bytes,
        preview: str,
        expires_at: int,
        expected_versions: Collection[int] | None = None,
        save_number: int | None = None,
    ) -> Record:
        """Replace a held record's token and expiry. `expected_versions` (an If-Match):
        None accepts any version; otherwise the record's must be listed, or
        PreconditionFailed (an empty collection never matches). `save_number` as for create."""
        expected = "*" if expected_versions is None else " ".join(str(int(v)) for v in expected_versions)
        reply = self._run(
            "refresh", number, user_id, sealed, preview, expires_at, self.retention_ms, PRUNE_BATCH, expected,
            self.events_maxlen, "" if save_number is None else save_number,
        )
        if reply[0] == RefreshReply.NOT_FOUND:
            raise NotFound(format_id(number))
        if reply[0] == RefreshReply.PRECONDITION_FAILED:
            raise PreconditionFailed(int(reply[1]))
        if reply[0] == RefreshReply.ALREADY_EXPIRED:
            raise AlreadyExpired()
        return self._held(reply[1], reply[2])

    def get(self, number: int, reveal: bool = False) -> Record | None:
        """The record with its sealed token. `reveal` counts the reveal (on the primary
        only: when reads go to replicas, reveals are not counted)."""
        if self.replicas is not None:
            reply = self._read("get", number, "0")
        else:
            reply = self._run("get", number, "1" if reveal else "0", retry=not reveal)
        return self._held(reply[0], reply[1], reply[2]) if len(reply) > 1 else None

    def current(self, user_id: str | None = None, reveal: bool = False) -> Record | None:
        """The most recently saved record held (with its sealed token when `reveal`)."""
        user = user_id or ""
        if self.replicas is None:
            reply = self._run("current", user, PRUNE_BATCH, "1" if reveal else "0", retry=not reveal)
        else:
            flag = "2" if reveal else "0"
            reply = self._bounded_read("current", (user, 0, flag), (user, PRUNE_BATCH, flag))
        return self._current_answer(user, reply)

    def _current_answer(self, user: str, reply: list) -> Record | None:
        """The record a current script's reply names (None: none held)."""
        self._passed_over(user, reply[2])
        if reply[0] == ReadReply.CATCHING_UP:
            raise StoreUnavailable("catching_up")
        if len(reply) == 3:  # {ANSWERED, now, foreign}: none held
            return None
        return self._held(reply[1], reply[3], reply[4] if len(reply) > 4 else None)

    def page(self, offset: int, limit: int, user_id: str | None = None) -> tuple[int, list[Listed]]:
        user = user_id or ""
        if self.replicas is None:
            reply = self._run("page", user, offset, limit, PRUNE_BATCH, retry=True)
        else:
            reply = self._bounded_read("page", (user, offset, limit, 0), (user, offset, limit, PRUNE_BATCH))
        return self._page_answer(user, reply)

    def _page_answer(self, user: str, reply: list) -> tuple[int, list[Listed]]:
        """The total and listed records of a page script's reply."""
        self._passed_over(user, reply[3])
        if reply[0] == ReadReply.CATCHING_UP:
            raise StoreUnavailable("catching_up")
        now_ms = reply[1]
        return int(reply[2]), [self._listed(now_ms, fields) for fields in reply[4:]]

    def _bounded_read(self, name: str, replica_args: tuple, primary_args: tuple) -> Any:
        """A read on a replica; when it answers CATCHING_UP, once more on the primary, whose
        prune makes progress (replicas never prune, so without it they would not catch up
        until a write came along)."""
        reply = self._read(name, *replica_args)
        if reply[0] == ReadReply.CATCHING_UP:
            reply = self._run(name, *primary_args, retry=True)
        return reply

    @staticmethod
    def _passed_over(user_id: str, numbers: list) -> None:
        """Log the entries of a user's index that named another user's record (and so were
        skipped): by ids only, never a token."""
        for number in numbers:
            log.warning(
                "index entry of another user's record skipped",
                extra={"event": "foreign_index_entry", "record_id": format_id(int(number)), "user_id": user_id},
            )

    def delete(self, number: int) -> bool:
        return bool(self._run("delete", number, self.events_maxlen))

    def clear(self, user_id: str | None = None, keep: int | None = None) -> int:
        """Make every record (or one user's, but `keep` when given) invisible at once;
        returns how many were live. NotFound when `keep` is not a held record of the user
        (nothing is cleared then)."""
        if user_id:
            reply = self._run("clear_user", user_id, "" if keep is None else keep, self.events_maxlen)
            if reply[0] == ClearReply.KEEP_NOT_HELD:
                raise NotFound(format_id(keep or 0))
            self._passed_over(user_id, reply[2])
            return int(reply[1])
        return int(self._run("clear_all", self.events_maxlen))
