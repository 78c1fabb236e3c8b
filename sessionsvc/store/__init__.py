"""The token store: the only package that speaks Redis (``scripts`` holds its Lua,
``client`` builds its Redis clients; this module is the store itself).

Key layout
----------
Every key of a store starts with its prefix in braces, ``{P}`` (``{sessionsvc}`` by
default): one hash tag, so one store lives in one Cluster slot and every script below
runs unchanged on Redis Cluster. ``G`` is the store's current generation (see *Clear*).

==============================  =======  ==================================================
key                             type     content
==============================  =======  ==================================================
``{P}:ids``                     string   record number counter (INCRBY; never reset)
``{P}:saves``                   string   save counter: the true order of POSTs and PUTs
``{P}:gen``                     string   current generation G (absent means 0)
``{P}:reclaim``                 set      old generations whose keys are still being freed
``{P}:pruned``                  string   index entries pruned so far (a store-wide counter
                                         for metrics; INCRBY in ``prune``)
``{P}:seals``                   hash     field key id, value: tokens sealed under that key
                                         (HINCRBY in create, refresh and reseal: AES-GCM's
                                         random-nonce budget, counted per key)
``{P}:r:<n>``                   hash     record ``n``: ``u`` user id, ``t`` sealed token,
                                         ``p`` preview, ``e`` expires_at (unix s), ``s``
                                         saved_at, ``c`` created_at, ``o`` save number
                                         (also the ETag), ``g`` generation, ``rc``/``rl``
                                         reveal count and last reveal (unix s).
                                         PEXPIREAT = expires_at + retention.
``{P}:all:G``                   zset     member ``n``, score save number: the listing
``{P}:u:G:<user>``              zset     member ``n``, score save number: one user's listing
                                         (trusted no further than each record's ``u``)
``{P}:exp:G``                   zset     member ``n:<user>``, score the record's death
                                         (ms, = its PEXPIREAT): finds index entries of
                                         records Redis has expired
``{P}:slot-guard``              (none)   never written; declared by every script so that
                                         Redis refuses (TRYAGAIN) to run one while the
                                         store's slot is half-migrated between masters
``{P}:idem:<k>``                hash     one idempotent POST; ``k`` = SHA-256 hex of the
                                         client's scope and ``Idempotency-Key``. ``f`` keyed
                                         digest of the request (never the token itself),
                                         ``at`` Redis time of the create (ms), and the
                                         created record's ``n u p e s c o`` as answered.
                                         PEXPIRE = the idempotency window.
==============================  =======  ==================================================

Rate-limit counters (flask-limiter, only when ``SESSIONSVC_RATE_LIMIT`` is set) share this
Redis under ``P:limits:...`` (no braces: they are per client, not per store slot); they are
written by flask-limiter through the store's connection pool, never by this module.

Every record is in exactly the three indexes of its generation, and every change to a
record and its index entries happens in one Lua script, so no reader or crash can see one
without the other. Redis alone deletes records (their TTL); index entries of records it
has expired are pruned by the scripts, at most ``PRUNE_BATCH`` per call, so a burst of
expiries is absorbed over many requests. While some remain, counts subtract them exactly
(ZCOUNT on ``exp``) and pages skip them, so an expired record is never counted or listed.

No read walks an index. While at most ``DEAD_WINDOW`` entries are dead, a page finds their
ranks and maps itself to exact positions; beyond that, a read passes over at most
``WALK_BUDGET`` entries, and one that would need more answers ``CATCHING_UP`` (the store
raises ``StoreUnavailable("catching_up")``: 503 and Retry-After). Its own prune made
progress, so a retry converges.

Reads scoped to a user (current, validity, page, clear) check each record's owner ``u``:
an entry of ``u:G:<user>`` naming another user's record is passed over (logged by id,
never with a token) and, on the primary, removed from that index; clear never deletes
that record.

Time always comes from Redis (``TIME`` inside the scripts), so ``is_valid`` and
``seconds_remaining`` agree across app hosts whatever their clocks say.

Commands per operation (each is one EVALSHA with KEYS = gen, slot-guard: one round-trip)
-----------------------------------------------------------------------------------------
- reserve ids: ``INCRBY {P}:ids <block>`` once per ``ID_BLOCK`` creations (the id is
  needed before the script, to bind the ciphertext to it).
- create: GET gen, TIME, HINCRBY seals, [HMGET idem: held -> answer the stored snapshot, or refuse a
  different digest], INCR saves, HSET + PEXPIREAT record, ZADD x3, [HSET + PEXPIRE idem],
  prune. The check and the record happen in one script, so two processes racing with one
  key create one record.
- bulk load (``create_many``): the create script per record, pipelined, one round-trip
  per ``BULK_BATCH`` records.
- refresh: GET gen, TIME, HINCRBY seals, HMGET (exists, same generation, owner, version), ZSCORE exp
  (not dead by the script's clock, to the millisecond), INCR saves,
  HSET + PEXPIREAT, ZADD x3 (same members, new scores), prune. The existence check and the
  writes are one script, and Redis treats a key whose TTL passed before the script started
  as gone, so a refresh can neither revive a record past retention nor leave a hash
  without a TTL.
  The caller must name the owner (the ciphertext is bound to it): ``owner`` answers from
  a per-process cache of record number -> user id filled by every record the store
  returns, and only on a miss runs its script (GET gen, HMGET), a second round-trip.
- get: GET gen, TIME, HMGET [+ HINCRBY/HSET reveal counters when revealing].
- current / validity: GET gen, TIME, prune, ZCOUNT exp, ZREVRANGE of the (user) index
  from the top, HMGET [+ ZSCORE exp while entries are dead] per entry until a live record
  of that user, at most ``DEAD_WINDOW + WALK_BUDGET`` entries (else ``CATCHING_UP``)
  [+ ZREM of entries naming another user's record].
- page: GET gen, TIME, prune, ZCARD, ZCOUNT exp; while entries are dead (at most
  ``DEAD_WINDOW``), ZRANGEBYSCORE exp LIMIT ``DEAD_WINDOW`` + ZREVRANK per dead entry of
  this index: the exact total and the page's exact positions. A page past the total
  answers there; otherwise ZREVRANGE of those positions, HMGET [+ ZSCORE exp] per entry
  (owner checked as for current). O(log N + limit), plus ``DEAD_WINDOW`` ranks. More
  dead entries than that: the whole-store page walks from the top (total ZCARD - ZCOUNT),
  a user's page reads their whole index, each within ``WALK_BUDGET`` entries (else
  ``CATCHING_UP``).
- delete: GET gen, HMGET, UNLINK record, ZREM x3.
- clear (all): ZCARD, ZCOUNT, INCR gen, SADD reclaim. O(1): the old generation becomes
  invisible at once; ``reclaim`` frees its keys afterwards in bounded batches
  (ZRANGE exp + UNLINK/ZREM per entry), also a little at every save.
- clear (one user): ZRANGE the user's index, HGET u per entry, UNLINK + ZREM x2 per
  record of that user, UNLINK the index.

Operations for operators and monitoring
---------------------------------------
- readiness: PING; SCRIPT EXISTS of every script (SCRIPT LOAD of any missing one);
  HGET seals <encrypting key id> (``encryptions``).
- census (every metrics scrape): GET gen, TIME, ZCARD all, ZCOUNT exp, GET pruned,
  HGETALL seals,
  ZRANDMEMBER all ``CENSUS_SAMPLE`` + HMGET per sampled record: the live count is exact,
  the count per key id is exact up to ``CENSUS_SAMPLE`` records and a uniform sample
  above (``scan`` gives exact counts, for the ``stats`` command).
- check-index: the prune script until nothing is due; SCAN MATCH ``{P}:r:*`` then, per
  batch of records, HMGET + PTTL + ZSCORE x3 (repair: PEXPIREAT, ZADD x3, UNLINK of
  records of a generation neither current nor being reclaimed); ZRANGE of ``all``,
  ``exp`` and every ``u`` index (SCAN MATCH ``{P}:u:G:*``) in batches, HMGET per entry
  (repair: ZREM of entries whose record is not held).

Topologies (see ``connect``)
----------------------------
- With ``min_replicas_ack`` every write script (and the ids INCRBY) is pipelined with
  ``WAIT <n> <timeout>`` on the same connection: still one round-trip. Fewer acks in time:
  StoreUnavailable, though the write may exist on the primary.
- With ``replicas`` get, current/validity and page run as EVALSHA_RO (EVAL_RO when the
  replica lacks the script) with prune batch 0 and no reveal counting, so they write
  nothing; ``is_valid`` still comes from ``e`` against the replica's TIME. A replica's
  ``CATCHING_UP`` is asked once more of the primary, whose prune makes progress.

Failures and retries
--------------------
The client has short connect/socket timeouts, keepalive, a health check on idle
connections, a bounded pool that raises at once when exhausted, and no retries of its
own (see ``connect``). Every Redis failure that says "not now" (refused or reset
connection, timeout, LOADING, READONLY after a failover, exhausted pool, OOM under
``noeviction``, BUSY script, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, NOREPLICAS, MISCONF)
becomes ``StoreUnavailable(kind)``, as does a read's ``CATCHING_UP`` (kind
``catching_up``); the API answers it with 503 and ``Retry-After``.
Only operations that are safe to repeat are retried, and only on a failed or reset
connection (which fails fast; a timeout is never retried, so no call waits for two of
them): reads, id reservation (a lost block of ids only skips numbers), and a create
that carries an idempotency key (a repeat answers the first one's record). Retries
wait with jittered exponential backoff (``READ_RETRIES``, ``BACKOFF``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from .client import connect, unavailable_kind
from .scripts import CATCHING_UP, DEAD_WINDOW, PRELUDE, SCRIPTS, WALK_BUDGET, WRITES, script_source

__all__ = [
    "DEAD_WINDOW", "WALK_BUDGET", "AlreadyExpired", "IdempotencyClaim", "IdempotencyConflict", "IndexReport",
    "NotFound", "NumberInUse", "PreconditionFailed", "Record", "StoreUnavailable", "TokenStore", "connect",
    "format_id", "parse_id", "script_source",
]

log = logging.getLogger("sessionsvc")

PRUNE_BATCH = 256
RECLAIM_BATCH = 1000
ID_BLOCK = 16
# Record number -> user id, per process. Safe to cache without invalidation: numbers are
# never reused and a record's user never changes. Saves PUT the owner lookup it needs to
# bind the new ciphertext to the user (a miss costs one extra round-trip).
OWNER_CACHE_SIZE = 50_000
BULK_BATCH = 1000
CENSUS_SAMPLE = 200
SEALED_HEAD_BYTES = 17  # enough for '<key id>:' (key ids are at most 16 characters)
READ_RETRIES = 2
# Full jitter: the n-th retry waits a random 0..min(cap, base * 2**n) seconds.
BACKOFF = ExponentialWithJitterBackoff(base=0.025, cap=0.25)


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


class _Refill:
    """A block of ids on its way from Redis, and how its fetch ended for those waiting."""

    __slots__ = ("done", "failure")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failure: str | None = None  # the StoreUnavailable kind it failed with


class StoreUnavailable(Exception):
    """Redis did not answer in time or refused the command; the kind names the reason."""

    def __init__(self, kind: str):
        super().__init__(f"store unavailable: {kind}")
        self.kind = kind


class Record(NamedTuple):
    """One record as Redis returned it: an immutable snapshot. A named tuple rather than a
    frozen dataclass because it is built for every record a request touches (20 per page),
    and a tuple is built in a third of the time."""

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


# Called after every store operation: (operation, seconds, error kind or None).
Observer = Callable[[str, float, "str | None"], None]


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """What makes a create idempotent: the client's key (already scoped to the client)
    and keyed digests of the request, one per encryption key, the first one stored."""

    key: str
    digests: tuple[str, ...]


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


class TokenStore:
    """Records and their indexes in one Redis (or Cluster slot), under one key prefix.

    ``replicas``: a client whose read-only scripts may be served by replicas (None: every
    read goes to the primary). ``min_replicas_ack``: writes wait for that many replicas to
    acknowledge them (WAIT) and fail as unavailable when they do not in time.
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
    ):
        self.client = client
        self.replicas = replicas
        self.min_replicas_ack = min_replicas_ack
        self.replica_ack_timeout_ms = replica_ack_timeout_ms
        self.root = "{" + key_prefix + "}"
        self.retention_ms = retention_seconds * 1000
        self.observe = observe
        # The guard never exists: declaring it makes Redis refuse (TRYAGAIN) to run a
        # script while the store's slot is half-migrated, instead of letting it run on
        # the node that holds only part of the store.
        self._keys = [self.root + ":gen", self.root + ":slot-guard"]
        self.idempotency_ms = max(1, idempotency_seconds) * 1000
        self._scripts = {name: client.register_script(PRELUDE + body) for name, body in SCRIPTS.items()}
        self._id_lock = threading.Lock()
        self._next_number = 0
        self._block_end = 0
        self._refill: _Refill | None = None
        self._owners: OrderedDict[int, str] = OrderedDict()

    # --- plumbing ------------------------------------------------------------------

    def _attempt(
        self, operation: str, command: Callable[[], Any], retry: bool = False, any_error: bool = False
    ) -> Any:
        """Run one Redis call; Redis saying "not now" becomes StoreUnavailable(kind), and
        the duration and outcome are reported to the observer.

        With `retry` (only for calls safe to repeat), a failed or reset connection is
        retried up to READ_RETRIES times after a jittered backoff; timeouts, LOADING and
        an exhausted pool are not, so no call waits much longer than one timeout.
        `any_error` maps every Redis error, for calls whose other failures tell the
        caller nothing more.
        """
        started, failed_kind, failures = time.perf_counter(), None, 0
        try:
            while True:
                try:
                    return command()
                except StoreUnavailable as error:
                    failed_kind = error.kind
                    raise
                except (RedisError, RedisClusterException) as error:
                    kind = unavailable_kind(error) or ("error" if any_error else None)
                    failed_kind = kind or "error"
                    if kind is None:
                        raise
                    if not (retry and kind == "connection" and failures < READ_RETRIES):
                        raise StoreUnavailable(kind) from None
                    failures += 1
                    time.sleep(BACKOFF.compute(failures))
        finally:
            if self.observe is not None:
                self.observe(operation, time.perf_counter() - started, failed_kind)

    def _acknowledged(self, queue: Callable[[Any], Any]) -> Any:
        """The queued write and a WAIT for replicas, on one connection in one round-trip
        (Redis forbids WAIT inside scripts). Returns the write's reply."""
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                queue(pipe)
                pipe.wait(self.min_replicas_ack, self.replica_ack_timeout_ms)
                reply, acknowledged = pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                # Not run at all (a new or restarted master): load the scripts, go again.
                for script in self._scripts.values():
                    script.sha = self.client.script_load(script.script)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if acknowledged < self.min_replicas_ack:
                # The write is on the primary and may still reach a replica: unknown outcome.
                raise StoreUnavailable("replica_ack")
            return reply
        raise StoreUnavailable("noscript")

    def _run(self, name: str, *args: Any, retry: bool = False) -> Any:
        """A script on the primary; writes wait for replicas when so configured."""
        script, argv = self._scripts[name], [self.root, *args]
        if self.min_replicas_ack and name in WRITES:
            return self._attempt(
                name,
                lambda: self._acknowledged(lambda pipe: pipe.evalsha(script.sha, len(self._keys), *self._keys, *argv)),
                retry,
            )
        return self._attempt(name, lambda: script(keys=self._keys, args=argv), retry)

    def _read(self, name: str, *args: Any) -> Any:
        """A read-only script on a replica (EVALSHA_RO). The caller passes arguments that
        make the script write nothing: no pruning, no reveal counting."""
        script = self._scripts[name]
        keys_and_args = (*self._keys, self.root, *args)

        def run() -> Any:
            try:
                return self.replicas.evalsha_ro(script.sha, len(self._keys), *keys_and_args)
            except NoScriptError:
                return self.replicas.eval_ro(script.script, len(self._keys), *keys_and_args)

        return self._attempt(name, run, retry=True)

    def _remember_owner(self, number: int, user_id: str) -> None:
        owners = self._owners
        if number in owners:
            return
        owners[number] = user_id
        if len(owners) > OWNER_CACHE_SIZE:
            try:
                owners.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                pass

    def _held(self, now_ms: int, fields: list, sealed: bytes | None = None) -> Record:
        """A record as Redis returned it; its owner is remembered for later refreshes."""
        record = self._record(now_ms, fields, sealed)
        self._remember_owner(record.number, record.user_id)
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

    def ping(self) -> bool:
        return bool(self._attempt("ping", self.client.ping, any_error=True))

    def load_scripts(self) -> int:
        """Make sure Redis holds every script (SCRIPT EXISTS, then SCRIPT LOAD of any
        missing one, e.g. after a restart); returns how many had to be loaded."""
        scripts = list(self._scripts.values())

        def load() -> int:
            held = self.client.script_exists(*[script.sha for script in scripts])
            missing = [script for script, exists in zip(scripts, held, strict=True) if not exists]
            for script in missing:
                self.client.script_load(script.script)
            return len(missing)

        return self._attempt("load_scripts", load, any_error=True)

    # --- ids -----------------------------------------------------------------------

    def reserve_number(self) -> int:
        """A record number no other caller will ever get (ids are allocated in blocks).

        One caller at a time fetches the next block (the lock guards only the block in
        memory, never a Redis call); callers that find the block used up while it is on
        its way wait for it instead of fetching blocks of their own. Without that, a busy
        gevent worker fetched a block for every create waiting at that moment and used one
        number of each: a second round-trip on most creates. When the fetch fails, its
        waiters fail with it at once, so on a stalled Redis they answer side by side, not
        one timeout after another.
        """
        while True:
            with self._id_lock:
                if self._next_number < self._block_end:
                    self._next_number += 1
                    return self._next_number - 1
                refill = self._refill
                if refill is None:
                    refill = self._refill = _Refill()
                    break
            refill.done.wait()
            if refill.failure is not None:
                raise StoreUnavailable(refill.failure)
        try:
            end = int(self._fetch_block())
        except StoreUnavailable as error:
            refill.failure = error.kind
            raise
        else:
            first = end - ID_BLOCK + 1
            with self._id_lock:  # nobody else refills: the block is still used up
                self._next_number, self._block_end = first + 1, end + 1
            return first
        finally:  # after the block is in place; on any other error too (waiters then try themselves)
            with self._id_lock:
                self._refill = None
            refill.done.set()

    def _fetch_block(self) -> Any:
        key = self.root + ":ids"
        if self.min_replicas_ack:
            return self._attempt("reserve", lambda: self._acknowledged(lambda pipe: pipe.incrby(key, ID_BLOCK)))
        return self._attempt("reserve", lambda: self.client.incrby(key, ID_BLOCK), retry=True)

    def _forget_block(self) -> None:
        with self._id_lock:
            self._next_number = self._block_end = 0

    def reserve_numbers(self, count: int) -> range:
        """`count` consecutive record numbers in one INCRBY (for bulk loads)."""
        end = int(self._attempt("reserve", lambda: self.client.incrby(self.root + ":ids", count), any_error=True))
        return range(end - count + 1, end + 1)

    # --- operations ----------------------------------------------------------------

    def create(
        self,
        number: int,
        user_id: str,
        sealed: bytes,
        preview: str,
        expires_at: int,
        idempotency: IdempotencyClaim | None = None,
    ) -> Record:
        """Store a new record under a reserved number. With an idempotency claim, a key
        already used for the same request answers the record it created then
        (``replayed``) and stores nothing; for another request it raises
        IdempotencyConflict. NumberInUse when another record holds the number already:
        possible only after a failover lost the counter's last blocks."""
        key_hash, digests = "", ""
        if idempotency is not None:
            key_hash = hashlib.sha256(idempotency.key.encode("utf-8")).hexdigest()
            digests = " ".join(idempotency.digests)
        try:
            reply = self._run(
                "create", *self._create_args(number, user_id, sealed, preview, expires_at, key_hash, digests),
                retry=idempotency is not None,
            )
        except ResponseError as error:
            if "record number in use" not in str(error):
                raise
            self._forget_block()
            raise NumberInUse(format_id(number)) from None
        if reply[0] == -1:
            raise IdempotencyConflict()
        if reply[0] == -2:
            raise AlreadyExpired()
        record = self._held(reply[1], reply[2])
        return record._replace(replayed=True) if reply[0] == 2 else record

    def _create_args(
        self, number: int, user_id: str, sealed: bytes, preview: str, expires_at: int,
        key_hash: str = "", digests: str = "",
    ) -> tuple:
        """The create script's ARGV after the root (see scripts.py)."""
        return (number, user_id, sealed, preview, expires_at, self.retention_ms, PRUNE_BATCH,
                key_hash, digests, self.idempotency_ms)

    def create_many(self, rows: Iterable[tuple[int, str, bytes, str, int]], batch: int = BULK_BATCH) -> int:
        """Bulk load: the create script for each (number, user id, sealed, preview,
        expires_at), pipelined in batches (one round-trip per batch). Returns the count."""
        count = 0
        pipe = self.client.pipeline(transaction=False)
        for number, user_id, sealed, preview, expires_at in rows:
            args = [self.root, *self._create_args(number, user_id, sealed, preview, expires_at)]
            self._scripts["create"](keys=self._keys, args=args, client=pipe)
            count += 1
            if count % batch == 0:
                pipe.execute()
        pipe.execute()
        return count

    def owner(self, number: int) -> str | None:
        cached = self._owners.get(number)
        if cached is not None:
            return cached
        user = self._run("owner", number, retry=True)
        if not user:
            return None
        self._remember_owner(number, user.decode("ascii"))
        return user.decode("ascii")

    def refresh(
        self,
        number: int,
        user_id: str,
        sealed: bytes,
        preview: str,
        expires_at: int,
        expected_versions: Collection[int] | None = None,
    ) -> Record:
        """Replace a held record's token and expiry. `expected_versions` (an If-Match):
        None accepts any version; otherwise the record's must be listed, or
        PreconditionFailed (an empty collection never matches)."""
        expected = "*" if expected_versions is None else " ".join(str(int(v)) for v in expected_versions)
        reply = self._run(
            "refresh", number, user_id, sealed, preview, expires_at, self.retention_ms, PRUNE_BATCH, expected
        )
        if reply[0] == 0:
            raise NotFound(format_id(number))
        if reply[0] == -1:
            raise PreconditionFailed(int(reply[1]))
        if reply[0] == -2:
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
        self._passed_over(user, reply[2])
        if reply[0] == CATCHING_UP:
            raise StoreUnavailable("catching_up")
        if len(reply) == 3:
            return None
        return self._held(reply[1], reply[3], reply[4] if len(reply) > 4 else None)

    def page(self, offset: int, limit: int, user_id: str | None = None) -> tuple[int, list[Record]]:
        user = user_id or ""
        if self.replicas is None:
            reply = self._run("page", user, offset, limit, PRUNE_BATCH, retry=True)
        else:
            reply = self._bounded_read("page", (user, offset, limit, 0), (user, offset, limit, PRUNE_BATCH))
        self._passed_over(user, reply[3])
        if reply[0] == CATCHING_UP:
            raise StoreUnavailable("catching_up")
        now_ms = reply[1]
        return int(reply[2]), [self._held(now_ms, fields) for fields in reply[4:]]

    def _bounded_read(self, name: str, replica_args: tuple, primary_args: tuple) -> Any:
        """A read on a replica; when it answers CATCHING_UP, once more on the primary, whose
        prune makes progress (replicas never prune, so without it they would not catch up
        until a write came along)."""
        reply = self._read(name, *replica_args)
        if reply[0] == CATCHING_UP:
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
        return bool(self._run("delete", number))

    def clear(self, user_id: str | None = None) -> int:
        """Make every record (or one user's) invisible at once; returns how many were live."""
        if user_id:
            live, foreign = self._run("clear_user", user_id)
            self._passed_over(user_id, foreign)
            return int(live)
        return int(self._run("clear_all"))

    def reclaim(self, batch: int = RECLAIM_BATCH, deadline_seconds: float = 30.0) -> int:
        """Free cleared generations in bounded batches (never blocks Redis for long)."""
        freed, started = 0, time.monotonic()
        while time.monotonic() - started < deadline_seconds:
            step = int(self._run("reclaim", batch))
            freed += step
            if step == 0:
                break
        return freed

    def scan(self, chunk: int = 500) -> Iterator[tuple[int, str, bytes]]:
        """Every record of the current generation as (number, user id, sealed token)."""
        position = 0
        while True:
            reply = self._run("scan", position, chunk, retry=True)
            for index in range(1, len(reply), 3):
                yield int(reply[index]), reply[index + 1].decode("ascii"), reply[index + 2]
            if reply[0] < chunk:
                return
            position += chunk

    def reseal(self, number: int, old: bytes, new: bytes) -> bool:
        return bool(self._run("reseal", number, old, new))

    # --- monitoring and maintenance -------------------------------------------------

    def census(self, sample: int = CENSUS_SAMPLE) -> Census:
        reply = self._run("census", sample, SEALED_HEAD_BYTES, retry=True)
        seals = reply[2]
        encryptions = {seals[i].decode("ascii"): int(seals[i + 1]) for i in range(0, len(seals), 2)}
        return Census(records=int(reply[0]), pruned=int(reply[1]), encryptions=encryptions,
                      sealed_heads=list(reply[3:]))

    def encryptions(self, key_id: str) -> int:
        """How many tokens the store has seen sealed under one key id (HGET of ``seals``)."""
        count = self._attempt("encryptions", lambda: self.client.hget(self.root + ":seals", key_id), retry=True)
        return int(count or 0)

    def check_index(self, repair: bool = False, batch: int = 500) -> IndexReport:
        """Compare records and index entries of the current generation; with `repair`,
        re-index records, give TTL-less records their TTL and drop dangling entries.

        Index entries of records Redis has expired are pruned first (routine, what every
        save does), so whatever dangles afterwards is damage.
        """
        pruned = 0
        while step := int(self._run("prune", batch)):
            pruned += step
        flag = "1" if repair else "0"
        unindexed = no_ttl = stale = 0
        for keys in self._scan_keys(self.root + ":r:*", batch):
            numbers = [key[len(self.root) + 3 :] for key in keys]
            found = [int(count) for count in self._run("check_records", self.retention_ms, flag, *numbers)]
            unindexed, no_ttl, stale = unindexed + found[0], no_ttl + found[1], stale + found[2]
        generation = self._attempt("check_index", lambda: self.client.get(self.root + ":gen"), any_error=True)
        user_prefix = f"{self.root}:u:{int(generation or 0)}:"
        indexes = [("all", b""), ("exp", b"")]
        for keys in self._scan_keys(user_prefix + "*", batch):
            indexes += [("user", key[len(user_prefix) :]) for key in keys]
        dangling = 0
        for kind, user in indexes:
            position = 0
            while True:
                read, found_here = (int(x) for x in self._run("check_entries", flag, kind, user, position, batch))
                dangling += found_here
                if read < batch:
                    break
                position += read - (found_here if repair else 0)
        return IndexReport(pruned, dangling, unindexed, no_ttl, stale)

    def _scan_keys(self, pattern: str, batch: int) -> Iterator[list[bytes]]:
        """Names of keys matching a pattern of the store's own prefix, in batches (SCAN,
        never KEYS; no user input is ever part of the pattern)."""
        keys = self.client.scan_iter(match=pattern, count=batch)
        while chunk := self._attempt("scan_keys", lambda: list(itertools.islice(keys, batch)), any_error=True):
            yield chunk
