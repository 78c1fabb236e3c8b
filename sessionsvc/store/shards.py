"""One store over S shard stores (see *Sharding* in ``sessionsvc.store``).

``open_store`` builds the store the vault talks to: with S = 1 a ``TokenStore`` under the
prefix's own hash tag, exactly as before sharding; with S > 1 a ``ShardedStore`` of S
``TokenStore`` s, each under its own tag. Both answer the same operations.

A sharded store routes every operation that names a user to that user's shard (a stable
hash of the user id), every operation that names a record to the shard its number names
(number mod S), and fans the whole-store operations out to every shard in one pipeline
(one round-trip per master).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS as CLUSTER_SLOTS
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from . import cursors, feed, operations
from .client import unavailable_kind
from .maintenance import CENSUS_SAMPLE, RECLAIM_BATCH, SEALED_HEAD_BYTES
from .operations import BULK_BATCH, TokenStore
from .records import (
    Census,
    EventPage,
    IdempotencyClaim,
    IdempotencyConflict,
    IndexReport,
    Listed,
    Observer,
    PageTooDeep,
    Record,
    ShardCountMismatch,
    StoreUnavailable,
)
from .runner import ScriptRunner
from .scripts import LAYOUT, ReadReply

# A page of a sharded store without a user reads offset + limit entries from every shard:
# its Redis work grows with S × (offset + limit) (bench/sharding.py). This many entries in
# all bound it; a page that reaches deeper is refused, unless it lies past the end (then it
# answers at once, empty). The largest page a request may ask for (limit 100) always fits:
# page 1 answers at any S.
GLOBAL_PAGE_ENTRIES = 4000
LARGEST_PAGE = 100


def max_global_depth(shards: int) -> int:
    """How deep (offset + limit) a page of the whole store may reach with `shards` shards."""
    return max(LARGEST_PAGE, GLOBAL_PAGE_ENTRIES // shards)

# An offset past any store's size: a page script asked for it answers its total at once.
TOTAL_ONLY_OFFSET = 10**15
# How long the whole store's event stream pauses between reads when it has nothing new.
EVENTS_POLL_MS = 500
# A global current whose record is deleted between the fan-out and its reveal is looked
# up again, this many times at most.
CURRENT_ATTEMPTS = 3


@functools.cache
def shard_prefix(key_prefix: str, shard: int, shards: int) -> str:
    """The key prefix of one shard: the store's own with S = 1, else ``P/k`` or, when that
    tag's slot is not in the k-th of S equal ranges of the Cluster's slots, ``P/k.n`` with
    the smallest n whose slot is. Shards so spread evenly over the slots, and so over the
    masters of a cluster whose slots are split evenly (as ``redis-cli --cluster create``
    and ``rebalance`` split them). A '/' never occurs in a configured prefix, so no other
    store's keys can look like a shard's."""
    if shards == 1:
        return key_prefix
    low, high = shard * CLUSTER_SLOTS // shards, (shard + 1) * CLUSTER_SLOTS // shards
    for nonce in itertools.count():
        candidate = f"{key_prefix}/{shard}" if nonce == 0 else f"{key_prefix}/{shard}.{nonce}"
        if low <= key_slot(candidate.encode("utf-8")) < high:
            return candidate
    raise AssertionError("unreachable")


def shard_of_user(user_id: str, shards: int) -> int:
    """The shard of a user's records: a stable hash (SHA-1 of the UTF-8 bytes), the same in
    every process and every Python version, mod S."""
    digest = hashlib.sha1(user_id.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % shards


def check_shard_count(client: Any, key_prefix: str, shards: int) -> None:
    """Record S in Redis if the store has none yet, else compare: ShardCountMismatch when
    it differs. A store written before sharding (its ``ids`` counter exists, no layout
    recorded) counts as S = 1. StoreUnavailable when Redis does not answer."""
    root = "{" + key_prefix + "}"
    try:
        recorded = int(client.register_script(LAYOUT)(keys=[root + ":layout", root + ":ids"], args=[shards]))
    except (RedisError, RedisClusterException) as error:
        raise StoreUnavailable(unavailable_kind(error) or "error") from None
    if recorded != shards:
        raise ShardCountMismatch(configured=shards, recorded=recorded)


def open_store(
    client: Any, key_prefix: str = "sessionsvc", retention_seconds: int = 86400, shards: int = 1, **options: Any
) -> TokenStore | ShardedStore:
    """The store for `shards` shards (options as for ``TokenStore``)."""
    if shards == 1:
        return TokenStore(client, key_prefix, retention_seconds, **options)
    return ShardedStore(client, key_prefix, retention_seconds, shards, **options)


class ShardedStore:
    """S ``TokenStore`` s under one key prefix, answering as one store.

    Ids: a shard reserves numbers from its own counter; the record's number is that
    counter's value × S + the shard, so it names its shard and stays unique. Order: every
    save takes its save number from one counter, ``{P}:saves``, before the shard's
    script runs (one more round-trip), so the whole store keeps one order of saves.
    """

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        retention_seconds: int,
        shards: int,
        *,
        observe: Observer | None = None,
        replicas: Any = None,
        min_replicas_ack: int = 0,
        replica_ack_timeout_ms: int = 500,
        idempotency_seconds: int = 86400,
        **lifecycle: Any,
    ):
        self.client = client
        self.replicas = replicas
        self.shard_count = shards
        self.max_depth = max_global_depth(shards)
        self.shards = [
            TokenStore(client, shard_prefix(key_prefix, shard, shards), retention_seconds, observe=observe,
                       replicas=replicas, min_replicas_ack=min_replicas_ack,
                       replica_ack_timeout_ms=replica_ack_timeout_ms, idempotency_seconds=idempotency_seconds,
                       **lifecycle)
            for shard in range(shards)
        ]
        # The store-wide keys ({P}:saves, {P}:layout) in a slot of their own, run as any
        # store's keys are: timed, errors mapped, writes acknowledged by replicas.
        self._whole = ScriptRunner(client, key_prefix, observe=observe, min_replicas_ack=min_replicas_ack,
                                   replica_ack_timeout_ms=replica_ack_timeout_ms)
        self.root = self._whole.root

    # --- routing -------------------------------------------------------------------

    def _for_user(self, user_id: str) -> TokenStore:
        return self.shards[shard_of_user(user_id, self.shard_count)]

    def _for_number(self, number: int) -> TokenStore:
        return self.shards[number % self.shard_count]

    def _global_number(self, shard: int, local: int) -> int:
        return local * self.shard_count + shard

    # --- saves ---------------------------------------------------------------------

    def _save_numbers(self, count: int = 1, also: Callable[[Any], Any] | None = None) -> tuple[int, list[Any]]:
        """The last of `count` new save numbers (INCRBY ``{P}:saves``; a repeat after a
        failed connection only skips numbers), and the replies of what `also` queued on the
        same pipeline (one round-trip per master). With ``min_replicas_ack`` the counter is
        acknowledged by replicas, as the id counter is."""
        key, wait = self.root + ":saves", self._whole.min_replicas_ack

        def run() -> tuple[int, list[Any]]:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.incrby(key, count)
                if also is not None:
                    also(pipe)
                if wait:
                    pipe.wait(wait, self._whole.replica_ack_timeout_ms)
                replies = pipe.execute()
            if wait and replies.pop() < wait:
                raise StoreUnavailable("replica_ack")
            return int(replies[0]), replies[1:]

        return self._whole._attempt("save_number", run, retry=True)

    def reserve_number(self, user_id: str | None = None) -> int:
        shard = shard_of_user(user_id or "", self.shard_count)
        return self._global_number(shard, self.shards[shard].reserve_number())

    def reserve_numbers(self, user_ids: Sequence[str]) -> list[int]:
        by_shard: dict[int, list[int]] = {}
        for position, user_id in enumerate(user_ids):
            by_shard.setdefault(shard_of_user(user_id, self.shard_count), []).append(position)
        numbers = [0] * len(user_ids)
        for shard, positions in by_shard.items():
            locals_ = self.shards[shard].reserve_numbers([user_ids[position] for position in positions])
            for position, local in zip(positions, locals_, strict=True):
                numbers[position] = self._global_number(shard, local)
        return numbers

    def create(
        self, number: int, user_id: str, sealed: bytes, preview: str, expires_at: int,
        idempotency: IdempotencyClaim | None = None,
    ) -> Record:
        shard = self._for_number(number)
        if idempotency is None:
            save_number, _ = self._save_numbers()
        else:
            # The shard's script checks the key atomically among that user's records; a key
            # used for another user's record is held by another shard: looked for there in
            # the same round-trip as the save number (a repeat of one request always goes to
            # one shard, so retries stay exactly-once).
            key_tail = ":idem:" + idempotency.key_hash
            others = [other for other in self.shards if other is not shard]
            save_number, held = self._save_numbers(
                also=lambda pipe: [pipe.exists(other.root + key_tail) for other in others]
            )
            if any(held):
                raise IdempotencyConflict()
        return shard.create(number, user_id, sealed, preview, expires_at, idempotency, save_number=save_number)

    def create_many(self, rows: Iterable[tuple[int, str, bytes, str, int]], batch: int = BULK_BATCH) -> int:
        rows = list(rows)
        if not rows:
            return 0
        last, _ = self._save_numbers(len(rows))
        by_shard: dict[int, tuple[list, list[int]]] = {}
        for save_number, row in enumerate(rows, start=last - len(rows) + 1):
            shard_rows, save_numbers = by_shard.setdefault(row[0] % self.shard_count, ([], []))
            shard_rows.append(row)
            save_numbers.append(save_number)
        return sum(self.shards[shard].create_many(shard_rows, batch, save_numbers)
                   for shard, (shard_rows, save_numbers) in by_shard.items())

    def owner(self, number: int) -> str | None:
        return self._for_number(number).owner(number)

    def refresh(
        self, number: int, user_id: str, sealed: bytes, preview: str, expires_at: int,
        expected_versions: Collection[int] | None = None,
    ) -> Record:
        return self._for_number(number).refresh(
            number, user_id, sealed, preview, expires_at, expected_versions, save_number=self._save_numbers()[0]
        )

    # --- reads ---------------------------------------------------------------------

    def get(self, number: int, reveal: bool = False) -> Record | None:
        return self._for_number(number).get(number, reveal)

    def current(self, user_id: str | None = None, reveal: bool = False) -> Record | None:
        if user_id:
            return self._for_user(user_id).current(user_id, reveal)
        for _ in range(CURRENT_ATTEMPTS):
            newest = max(
                (record for record in self._every_current() if record is not None),
                key=_save_order, default=None,
            )
            if newest is None or not reveal:
                return newest
            # The fan-out read no token (nor counted a reveal on every shard): the one
            # revealed is read, and its reveal counted, on its own shard.
            revealed = self._for_number(newest.number).get(newest.number, reveal=True)
            if revealed is not None:
                return revealed
        raise StoreUnavailable("catching_up")

    def _every_current(self) -> list[Record | None]:
        """Each shard's most recently saved record (without its token)."""
        replies = self._fan_out("current", ("", operations.PRUNE_BATCH, "0"), ("", 0, "0"))
        return [
            shard.current() if reply is None else shard._current_answer("", reply)
            for shard, reply in zip(self.shards, replies, strict=True)
        ]

    def page(self, offset: int, limit: int, user_id: str | None = None) -> tuple[int, list[Listed]]:
        if user_id:
            return self._for_user(user_id).page(offset, limit, user_id)
        depth = offset + limit
        if depth > self.max_depth:
            total = sum(total for total, _ in self._every_page(TOTAL_ONLY_OFFSET, 1))
            if offset >= total:
                return total, []
            raise PageTooDeep(self.max_depth)
        pages = self._every_page(0, depth)
        merged = heapq.merge(*(records for _, records in pages), key=_save_order, reverse=True)
        return sum(total for total, _ in pages), list(itertools.islice(merged, offset, depth))

    def _every_page(self, offset: int, limit: int) -> list[tuple[int, list[Listed]]]:
        """Each shard's total and records from `offset` on (most recently saved first)."""
        replies = self._fan_out("page", ("", offset, limit, operations.PRUNE_BATCH), ("", offset, limit, 0))
        return [
            shard.page(offset, limit) if reply is None else shard._page_answer("", reply)
            for shard, reply in zip(self.shards, replies, strict=True)
        ]

    def _fan_out_each(self, name: str, arguments: Sequence[tuple]) -> list[Any]:
        """One read script on every shard in one pipeline, on the primaries, with each
        shard's own arguments: each shard's reply (a shard where the script was not loaded
        is asked again on its own, which loads it)."""

        def run() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                for shard, args in zip(self.shards, arguments, strict=True):
                    shard._queue(pipe, name, *args)
                return pipe.execute(raise_on_error=False)

        replies = self._whole._attempt(name, lambda: _raise_first(run()), retry=True)
        return [
            shard._run(name, *args, retry=True) if isinstance(reply, NoScriptError) else reply
            for shard, args, reply in zip(self.shards, arguments, replies, strict=True)
        ]

    def _fan_out(self, name: str, primary_args: tuple, replica_args: tuple | None = None) -> list[Any]:
        """One read script on every shard in one pipeline (redis-py's cluster pipeline
        sends each master its part at once, then reads the answers), on the replicas when
        reads go there and `replica_args` are given: each shard's reply, or None for a
        shard that must be asked on its own (the script was not loaded there, or a replica
        was catching up; its own call handles both)."""
        on_replicas = self.replicas is not None and replica_args is not None
        client = self.replicas if on_replicas else self.client
        args = replica_args if on_replicas else primary_args

        def run() -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for shard in self.shards:
                    shard._queue(pipe, name, *args, read_only=on_replicas)
                return pipe.execute(raise_on_error=False)

        replies = self._whole._attempt(name, lambda: _raise_first(run()), retry=True)
        return [
            None if isinstance(reply, NoScriptError) or (on_replicas and reply[0] == ReadReply.CATCHING_UP)
            else reply
            for reply in replies
        ]

    # --- deletes -------------------------------------------------------------------

    def delete(self, number: int) -> bool:
        return self._for_number(number).delete(number)

    def clear(self, user_id: str | None = None, keep: int | None = None) -> int:
        """One user's records but `keep` (on their shard: a `keep` of another shard is not
        theirs, NotFound), or every shard's generation switched in one pipeline: once this
        returns, no read returns a record saved before it."""
        if user_id:
            return self._for_user(user_id).clear(user_id, keep)

        def run() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                for shard in self.shards:
                    shard._queue(pipe, "clear_all", shard.events_maxlen)
                if self._whole.min_replicas_ack:
                    pipe.wait(self._whole.min_replicas_ack, self._whole.replica_ack_timeout_ms)
                replies = pipe.execute(raise_on_error=False)
            if self._whole.min_replicas_ack:
                acknowledged = replies.pop()
                if isinstance(acknowledged, Exception):
                    raise acknowledged
                if acknowledged < self._whole.min_replicas_ack:
                    raise StoreUnavailable("replica_ack")
            return replies

        replies = self._whole._attempt("clear_all", lambda: _raise_first(run()))
        return sum(
            shard.clear() if isinstance(reply, NoScriptError) else int(reply)
            for shard, reply in zip(self.shards, replies, strict=True)
        )

    # --- lifecycle: each shard store has its own event stream, due index and sweeper lease

    def events(
        self, after: str | None = None, limit: int = 100, user_id: str | None = None, event_type: str | None = None
    ) -> EventPage:
        """One user's events, in exact order, from their shard's stream (cursors are that
        stream's); without a user, every shard's merged (``sessionsvc.store.feed``)."""
        if not user_id:
            return feed.merged_events(self, after, limit, event_type)
        k = shard_of_user(user_id, self.shard_count)
        return self.shards[k].events(self._place_in(after, k), limit, user_id, event_type)

    def wait_for_events(self, after: str, timeout_ms: int, user_id: str | None = None) -> bool:
        """For one user, a blocking read of their shard's stream. For the whole store (S
        streams, in as many slots) a pause of at most EVENTS_POLL_MS: True, read again."""
        if user_id:
            k = shard_of_user(user_id, self.shard_count)
            return self.shards[k].wait_for_events(self._place_in(after, k), timeout_ms)
        time.sleep(min(timeout_ms, EVENTS_POLL_MS) / 1000)
        return True

    def _place_in(self, after: str | None, shard: int) -> str | None:
        """A cursor of one shard's stream: `after` itself, or its place in that shard when it
        is a cursor of the merged feed."""
        if not after or cursors.STREAM_ID.fullmatch(after):
            return after
        return cursors.stream_id(cursors.decode(after, self.shard_count)[shard])

    def sweep(self, holder: str, lease_ms: int, batch: int) -> int | None:
        """Every shard's sweep (each under its own lease): expiries told, or None while
        other processes hold every shard's lease."""
        told = [shard.sweep(holder, lease_ms, batch) for shard in self.shards]
        held = [count for count in told if count is not None]
        return sum(held) if held else None

    def release_sweeper(self, holder: str) -> bool:
        return any([shard.release_sweeper(holder) for shard in self.shards])

    def reclaim(self, batch: int = RECLAIM_BATCH, deadline_seconds: float = 30.0) -> int:
        return sum(shard.reclaim(batch, deadline_seconds / self.shard_count) for shard in self.shards)

    # --- operators and monitoring --------------------------------------------------

    def ping(self) -> bool:
        return self.shards[0].ping()

    def load_scripts(self) -> int:
        """Every shard runs the same scripts; on a Cluster SCRIPT LOAD reaches every master."""
        return self.shards[0].load_scripts()

    def census(self, sample: int = CENSUS_SAMPLE) -> Census:
        """Every shard's census in one pipeline, added up; each shard samples its share."""
        share = max(1, -(-sample // self.shard_count))
        replies = self._fan_out("census", (share, SEALED_HEAD_BYTES))
        parts = [
            shard.census(share) if reply is None else shard._census_answer(reply)
            for shard, reply in zip(self.shards, replies, strict=True)
        ]
        encryptions: dict[str, int] = {}
        for part in parts:
            for key_id, count in part.encryptions.items():
                encryptions[key_id] = encryptions.get(key_id, 0) + count
        return Census(
            records=sum(part.records for part in parts),
            pruned=sum(part.pruned for part in parts),
            encryptions=encryptions,
            sealed_heads=[head for part in parts for head in part.sealed_heads],
        )

    def encryptions(self, key_id: str) -> int:
        def run() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                for shard in self.shards:
                    pipe.hget(shard.root + ":seals", key_id)
                return pipe.execute()

        return sum(int(count or 0) for count in self._whole._attempt("encryptions", run, retry=True))

    def scan(self, chunk: int = 500) -> Iterator[tuple[int, str, bytes]]:
        for shard in self.shards:
            yield from shard.scan(chunk)

    def reseal(self, number: int, old: bytes, new: bytes) -> bool:
        return self._for_number(number).reseal(number, old, new)

    def check_index(self, repair: bool = False, batch: int = 500) -> IndexReport:
        reports = [shard.check_index(repair, batch) for shard in self.shards]
        return IndexReport(*(sum(values) for values in zip(*(_fields(report) for report in reports), strict=True)))


def _fields(report: IndexReport) -> tuple[int, ...]:
    return (report.pruned, report.dangling_entries, report.unindexed_records, report.records_without_ttl,
            report.stale_records)


def _save_order(record: Record | Listed) -> tuple[int, int]:
    """Most recently saved first: by save number; ties (two refreshes of one record landing
    out of order, or a save counter that lost increments in a failover) by record number."""
    return record.version, record.number


def _raise_first(replies: list[Any]) -> list[Any]:
    """The replies of a pipeline, unless one is an error other than NOSCRIPT (which the
    caller handles shard by shard)."""
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
            raise reply
    return replies

