"""The token store: the only module that speaks Redis.

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
``{P}:r:<n>``                   hash     record ``n``: ``u`` user id, ``t`` sealed token,
                                         ``p`` preview, ``e`` expires_at (unix s), ``s``
                                         saved_at, ``c`` created_at, ``o`` save number
                                         (also the ETag), ``g`` generation, ``rc``/``rl``
                                         reveal count and last reveal (unix s).
                                         PEXPIREAT = expires_at + retention.
``{P}:all:G``                   zset     member ``n``, score save number: the listing
``{P}:u:G:<user>``              zset     member ``n``, score save number: one user's listing
``{P}:exp:G``                   zset     member ``n:<user>``, score the record's death
                                         (ms, = its PEXPIREAT): finds index entries of
                                         records Redis has expired
``{P}:idem:<k>``                hash     one idempotent POST; ``k`` = SHA-256 hex of the
                                         client's scope and ``Idempotency-Key``. ``f`` keyed
                                         digest of the request (never the token itself),
                                         ``at`` Redis time of the create (ms), and the
                                         created record's ``n u p e s c o`` as answered.
                                         PEXPIRE = the idempotency window.
==============================  =======  ==================================================

Every record is in exactly the three indexes of its generation, and every change to a
record and its index entries happens in one Lua script, so no reader or crash can see one
without the other. Redis alone deletes records (their TTL); index entries of records it
has expired are pruned by the scripts, at most ``PRUNE_BATCH`` per call, so a burst of
expiries is absorbed over many requests. While some remain, counts subtract them exactly
(ZCOUNT on ``exp``) and pages skip them, so an expired record is never counted or listed.

Time always comes from Redis (``TIME`` inside the scripts), so ``is_valid`` and
``seconds_remaining`` agree across app hosts whatever their clocks say.

Commands per operation (each is one EVALSHA, i.e. one round-trip)
-----------------------------------------------------------------
- reserve ids: ``INCRBY {P}:ids <block>`` once per ``ID_BLOCK`` creations (the id is
  needed before the script, to bind the ciphertext to it).
- create: GET gen, TIME, [HMGET idem: held -> answer the stored snapshot, or refuse a
  different digest], INCR saves, HSET + PEXPIREAT record, ZADD x3, [HSET + PEXPIRE idem],
  prune. The check and the record happen in one script, so two processes racing with one
  key create one record.
- refresh: GET gen, TIME, HMGET (exists, same generation, owner, version), ZSCORE exp
  (not dead by the script's clock, to the millisecond), INCR saves,
  HSET + PEXPIREAT, ZADD x3 (same members, new scores), prune. The existence check and the
  writes are one script, and Redis treats a key whose TTL passed before the script started
  as gone, so a refresh can neither revive a record past retention nor leave a hash
  without a TTL.
- get: GET gen, TIME, HMGET [+ HINCRBY/HSET reveal counters when revealing].
- current / validity: GET gen, TIME, prune, ZREVRANGE of the (user) index from the top
  until a live record, HMGET.
- page: GET gen, TIME, prune, ZCOUNT exp, ZCARD + ZREVRANGE offset..offset+limit-1,
  HMGET per entry. O(log N + limit).
- delete: GET gen, HMGET, UNLINK record, ZREM x3.
- clear (all): ZCARD, ZCOUNT, INCR gen, SADD reclaim. O(1): the old generation becomes
  invisible at once; ``reclaim`` frees its keys afterwards in bounded batches
  (ZRANGE exp + UNLINK/ZREM per entry), also a little at every save.
- clear (one user): ZRANGE the user's index, UNLINK + ZREM x2 per record, DEL the index.

Failures and retries
--------------------
The client has short connect/socket timeouts, keepalive, a health check on idle
connections, a bounded pool that raises at once when exhausted, and no retries of its
own (see ``connect``). Every Redis failure that says "not now" (refused or reset
connection, timeout, LOADING, READONLY after a failover, exhausted pool, OOM under
``noeviction``, BUSY script, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, NOREPLICAS, MISCONF)
becomes ``StoreUnavailable(kind)``; the API answers it with 503 and ``Retry-After``.
Only operations that are safe to repeat are retried, and only on a failed or reset
connection (which fails fast; a timeout is never retried, so no call waits for two of
them): reads, id reservation (a lost block of ids only skips numbers), and a create
that carries an idempotency key (a repeat answers the first one's record). Retries
wait with jittered exponential backoff (``READ_RETRIES``, ``BACKOFF``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

PRUNE_BATCH = 256
RECLAIM_BATCH = 1000
ID_BLOCK = 16
RECORD_FIELDS = ("u", "p", "e", "s", "c", "o", "rc", "rl")
READ_RETRIES = 2
HEALTH_CHECK_SECONDS = 30
# Full jitter: the n-th retry waits a random 0..min(cap, base * 2**n) seconds.
BACKOFF = ExponentialWithJitterBackoff(base=0.025, cap=0.25)


class NotFound(Exception):
    """No record with that id is held."""


class PreconditionFailed(Exception):
    """The record changed since the version the caller named."""

    def __init__(self, current_version: int):
        super().__init__("record has changed")
        self.current_version = current_version


class AlreadyExpired(Exception):
    """The record would be dead (expires_at + retention) by Redis's clock before it is stored."""


class IdempotencyConflict(Exception):
    """The idempotency key was already used, within its window, for a different request."""


class StoreUnavailable(Exception):
    """Redis did not answer in time or refused the command; the kind names the reason."""

    def __init__(self, kind: str):
        super().__init__(f"store unavailable: {kind}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Record:
    number: int
    user_id: str
    token_preview: str
    expires_at: int
    saved_at: int
    created_at: int
    version: int
    seconds_remaining: int
    reveal_count: int = 0
    last_revealed_at: int | None = None
    sealed_token: bytes | None = None
    replayed: bool = False  # a snapshot answered again for a repeated idempotent create

    @property
    def id(self) -> str:
        return format_id(self.number)

    @property
    def is_valid(self) -> bool:
        return self.seconds_remaining > 0


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


# --- Lua -----------------------------------------------------------------------------
# Every script gets KEYS[1] = {P}:gen (which routes it to the store's slot) and
# ARGV[1] = {P}; the other keys share the hash tag and are built from it.

_PRELUDE = """
local root = ARGV[1]
local gen = redis.call('GET', KEYS[1]) or '0'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local all_key = root .. ':all:' .. gen
local exp_key = root .. ':exp:' .. gen
local reclaim_key = root .. ':reclaim'
local function user_key(user) return root .. ':u:' .. gen .. ':' .. user end
local function rec_key(n) return root .. ':r:' .. n end
local function ms(x) return string.format('%d', x) end

local function split(member)
  local sep = string.find(member, ':', 1, true)
  return string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
end

-- Drop up to `batch` index entries whose records have passed retention.
local function prune(batch)
  local dead = redis.call('ZRANGEBYSCORE', exp_key, '-inf', ms(now), 'LIMIT', 0, batch)
  for _, member in ipairs(dead) do
    local n, user = split(member)
    redis.call('ZREM', all_key, n)
    redis.call('ZREM', user_key(user), n)
    redis.call('UNLINK', rec_key(n))
  end
  if #dead > 0 then redis.call('ZREM', exp_key, unpack(dead)) end
  return #dead
end

-- Free up to `batch` records of a cleared generation.
local function reclaim(batch)
  local old = redis.call('SRANDMEMBER', reclaim_key)
  if not old then return 0 end
  local old_exp = root .. ':exp:' .. old
  local members = redis.call('ZRANGE', old_exp, 0, batch - 1)
  for _, member in ipairs(members) do
    local n, user = split(member)
    redis.call('UNLINK', rec_key(n))
    redis.call('ZREM', root .. ':u:' .. old .. ':' .. user, n)
    redis.call('ZREM', root .. ':all:' .. old, n)
  end
  if #members > 0 then redis.call('ZREM', old_exp, unpack(members)) end
  if #members < batch then
    redis.call('UNLINK', root .. ':all:' .. old, old_exp)
    redis.call('SREM', reclaim_key, old)
  end
  return #members
end

local FIELDS = {'u', 'p', 'e', 's', 'c', 'o', 'rc', 'rl', 'g'}

-- The record's fields if it is held in the current generation (and, when
-- `check_death`, its index entry says it has not passed retention), else nil.
local function load(n, check_death)
  local h = redis.call('HMGET', rec_key(n), unpack(FIELDS))
  if not h[1] or h[9] ~= gen then return nil end
  if check_death then
    local death = redis.call('ZSCORE', exp_key, n .. ':' .. h[1])
    if not death or tonumber(death) <= now then return nil end
  end
  h[9] = nil
  table.insert(h, 1, n)
  return h
end

local function index_add(n, user, save_number, death)
  redis.call('ZADD', all_key, save_number, n)
  redis.call('ZADD', user_key(user), save_number, n)
  redis.call('ZADD', exp_key, ms(death), n .. ':' .. user)
end

local function save_fields(n, user, blob, preview, expires, save_number, death)
  local saved = math.floor(now / 1000)
  redis.call('HSET', rec_key(n), 'u', user, 't', blob, 'p', preview, 'e', expires,
             's', saved, 'o', save_number, 'g', gen)
  redis.call('PEXPIREAT', rec_key(n), ms(death))
  index_add(n, user, save_number, death)
end

local function dead_count()
  return redis.call('ZCOUNT', exp_key, '-inf', ms(now))
end
"""

# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       idempotency key hash ('' = none), request digests (space-separated, the first is
#       stored), idempotency window (ms)
# -> {1, now, record} created | {2, then, record} replayed | {-1} key used for another
#    request | {-2} already dead by Redis's clock
_CREATE = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
local idem_key = nil
if ARGV[9] ~= '' then
  idem_key = root .. ':idem:' .. ARGV[9]
  local held = redis.call('HMGET', idem_key, 'f', 'at', 'n', 'u', 'p', 'e', 's', 'c', 'o')
  if held[1] then
    if not string.find(' ' .. ARGV[10] .. ' ', ' ' .. held[1] .. ' ', 1, true) then return {-1} end
    return {2, tonumber(held[2]), {held[3], held[4], held[5], held[6], held[7], held[8], held[9], false, false}}
  end
end
local death = expires * 1000 + tonumber(ARGV[7])
if death <= now then return {-2} end
if redis.call('EXISTS', rec_key(n)) == 1 then return redis.error_reply('record number in use') end
local save_number = redis.call('INCR', root .. ':saves')
save_fields(n, user, ARGV[4], ARGV[5], expires, save_number, death)
redis.call('HSET', rec_key(n), 'c', math.floor(now / 1000))
local record = load(n, false)
if idem_key then
  local digest = string.match(ARGV[10], '^%S+')
  redis.call('HSET', idem_key, 'f', digest, 'at', ms(now), 'n', n, 'u', user, 'p', ARGV[5], 'e', ARGV[6],
             's', record[5], 'c', record[6], 'o', save_number)
  redis.call('PEXPIRE', idem_key, ARGV[11])
end
prune(tonumber(ARGV[8]))
if redis.call('EXISTS', reclaim_key) == 1 then reclaim(tonumber(ARGV[8])) end
return {1, now, record}
"""

# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       expected versions ('*' = any, else space-separated; none listed never matches)
# -> {1, now, record} | {0} not found | {-1, version} precondition failed
#    | {-2} already dead by Redis's clock
_REFRESH = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
local held = redis.call('HMGET', rec_key(n), 'u', 'g', 'o')
if not held[1] or held[2] ~= gen or held[1] ~= user then return {0} end
-- Redis expires a key only once its time is strictly past (and by the script's start
-- time); by this store's clock a record is dead from its death on: never revive it.
local held_death = redis.call('ZSCORE', exp_key, n .. ':' .. user)
if not held_death or tonumber(held_death) <= now then return {0} end
if ARGV[9] ~= '*' and not string.find(' ' .. ARGV[9] .. ' ', ' ' .. held[3] .. ' ', 1, true) then
  return {-1, tonumber(held[3])}
end
local death = expires * 1000 + tonumber(ARGV[7])
if death <= now then return {-2} end
local save_number = redis.call('INCR', root .. ':saves')
save_fields(n, user, ARGV[4], ARGV[5], expires, save_number, death)
prune(tonumber(ARGV[8]))
if redis.call('EXISTS', reclaim_key) == 1 then reclaim(tonumber(ARGV[8])) end
return {1, now, load(n, false)}
"""

# ARGV: root, n, reveal ('1' counts a reveal) -> {now, record, sealed token} | {now}
_GET = """
local n = ARGV[2]
local record = load(n, false)
if not record then return {now} end
if ARGV[3] == '1' then
  record[8] = redis.call('HINCRBY', rec_key(n), 'rc', 1)
  record[9] = math.floor(now / 1000)
  redis.call('HSET', rec_key(n), 'rl', record[9])
end
return {now, record, redis.call('HGET', rec_key(n), 't')}
"""

# ARGV: root, n -> user id | false
_OWNER = """
local held = redis.call('HMGET', rec_key(ARGV[2]), 'u', 'g')
if not held[1] or held[2] ~= gen then return false end
return held[1]
"""

# ARGV: root, user ('' = all), prune batch, reveal ('1' returns the sealed token and
# counts a reveal) -> {now, record, sealed token} | {now}
_CURRENT = """
prune(tonumber(ARGV[3]))
local index = all_key
if ARGV[2] ~= '' then index = user_key(ARGV[2]) end
local check = dead_count() > 0
local position = 0
while true do
  local numbers = redis.call('ZREVRANGE', index, position, position + 15)
  if #numbers == 0 then return {now} end
  for _, n in ipairs(numbers) do
    local record = load(n, check)
    if record then
      if ARGV[4] ~= '1' then return {now, record} end
      record[8] = redis.call('HINCRBY', rec_key(n), 'rc', 1)
      record[9] = math.floor(now / 1000)
      redis.call('HSET', rec_key(n), 'rl', record[9])
      return {now, record, redis.call('HGET', rec_key(n), 't')}
    end
  end
  position = position + 16
end
"""

# ARGV: root, user ('' = all), offset, limit, prune batch -> {now, total, record...}
_PAGE = """
prune(tonumber(ARGV[5]))
local user, offset, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local index = all_key
if user ~= '' then index = user_key(user) end
local dead = dead_count()
local reply = {now, 0}
if dead == 0 then
  reply[2] = redis.call('ZCARD', index)
  for _, n in ipairs(redis.call('ZREVRANGE', index, offset, offset + limit - 1)) do
    local record = load(n, false)
    if record then reply[#reply + 1] = record end
  end
  return reply
end
-- A burst of expiries outran pruning: walk the index, skipping dead entries.
local seen, position = 0, 0
while true do
  local numbers = redis.call('ZREVRANGE', index, position, position + 255)
  if #numbers == 0 then break end
  for _, n in ipairs(numbers) do
    local record = load(n, true)
    if record then
      if seen >= offset and #reply - 2 < limit then reply[#reply + 1] = record end
      seen = seen + 1
    end
  end
  if user == '' and #reply - 2 >= limit then break end
  position = position + 256
end
if user == '' then
  reply[2] = redis.call('ZCARD', all_key) - dead
else
  reply[2] = seen
end
return reply
"""

# ARGV: root, n -> 1 deleted | 0 not held
_DELETE = """
local n = ARGV[2]
local held = redis.call('HMGET', rec_key(n), 'u', 'g')
if not held[1] or held[2] ~= gen then return 0 end
redis.call('UNLINK', rec_key(n))
redis.call('ZREM', all_key, n)
redis.call('ZREM', user_key(held[1]), n)
redis.call('ZREM', exp_key, n .. ':' .. held[1])
return 1
"""

# ARGV: root -> number of live records made invisible
_CLEAR_ALL = """
local live = redis.call('ZCARD', all_key) - dead_count()
redis.call('INCR', KEYS[1])
if redis.call('EXISTS', exp_key) == 1 or redis.call('EXISTS', all_key) == 1 then
  redis.call('SADD', reclaim_key, gen)
end
return live
"""

# ARGV: root, user -> number of live records deleted
_CLEAR_USER = """
local user = ARGV[2]
local live = 0
for _, n in ipairs(redis.call('ZRANGE', user_key(user), 0, -1)) do
  local member = n .. ':' .. user
  local death = redis.call('ZSCORE', exp_key, member)
  if death and tonumber(death) > now then live = live + 1 end
  redis.call('UNLINK', rec_key(n))
  redis.call('ZREM', all_key, n)
  redis.call('ZREM', exp_key, member)
end
redis.call('UNLINK', user_key(user))
return live
"""

# ARGV: root, batch -> entries freed (0 when nothing is left to reclaim)
_RECLAIM = """
return reclaim(tonumber(ARGV[2]))
"""

# ARGV: root, position, count
# -> {entries read, n, user, sealed token, ...} for held records of this generation
_SCAN = """
local numbers = redis.call('ZRANGE', all_key, ARGV[2], ARGV[2] + ARGV[3] - 1)
local reply = {#numbers}
for _, n in ipairs(numbers) do
  local held = redis.call('HMGET', rec_key(n), 'u', 't', 'g')
  if held[1] and held[3] == gen then
    reply[#reply + 1] = n
    reply[#reply + 1] = held[1]
    reply[#reply + 1] = held[2]
  end
end
return reply
"""

# ARGV: root, n, old sealed token, new sealed token -> 1 replaced | 0 record changed meanwhile
_RESEAL = """
local n = ARGV[2]
local held = redis.call('HMGET', rec_key(n), 't', 'g')
if held[1] ~= ARGV[3] or held[2] ~= gen then return 0 end
redis.call('HSET', rec_key(n), 't', ARGV[4])
return 1
"""

_SCRIPTS = {
    "create": _CREATE,
    "refresh": _REFRESH,
    "get": _GET,
    "owner": _OWNER,
    "current": _CURRENT,
    "page": _PAGE,
    "delete": _DELETE,
    "clear_all": _CLEAR_ALL,
    "clear_user": _CLEAR_USER,
    "reclaim": _RECLAIM,
    "scan": _SCAN,
    "reseal": _RESEAL,
}

# Redis saying "not now" rather than "wrong". Typed errors first, most specific first
# (BusyLoadingError and MaxConnectionsError are ConnectionErrors too); redis-py strips
# the code from the message of the typed ones.
_UNAVAILABLE: tuple[tuple[type[Exception], str], ...] = (
    (BusyLoadingError, "loading"),
    (MaxConnectionsError, "pool_exhausted"),
    (ReadOnlyError, "read_only"),
    (OutOfMemoryError, "oom"),
    (MasterDownError, "masterdown"),
    (ClusterDownError, "clusterdown"),
    (TryAgainError, "tryagain"),
    (RedisTimeoutError, "timeout"),
    (RedisConnectionError, "connection"),
)
# Untyped error replies of the same kind: a script running too long, too few replicas
# for min-replicas-to-write, writes stopped because snapshots fail.
UNAVAILABLE_REPLIES = ("BUSY", "NOREPLICAS", "MISCONF")


def _unavailable_kind(error: RedisError) -> str | None:
    for error_type, kind in _UNAVAILABLE:
        if isinstance(error, error_type):
            return kind
    if isinstance(error, ResponseError):
        text = str(error)
        if text.startswith(UNAVAILABLE_REPLIES):
            return text.split(" ", 1)[0].lower()
    return None


def connect(
    redis_url: str | None,
    *,
    timeout_seconds: float = 1.0,
    max_connections: int = 50,
    sentinels: tuple[str, ...] = (),
    sentinel_service: str = "mymaster",
    cluster: bool = False,
) -> Any:
    """A Redis client for the configured topology, or an in-process fakeredis when none is.

    Timeouts are short and explicit (and well below gunicorn's worker timeout) so a dead
    or stalled Redis gives a quick 503 instead of a hung worker; TCP keepalive and a PING
    on connections idle for ``health_check_interval`` seconds find dead peers before a
    request does. The pool is bounded and raises ``MaxConnectionsError`` at once when
    exhausted (a blocking pool would queue requests behind a slow Redis). The client
    retries nothing (a repeated script could apply twice): ``TokenStore`` retries what is
    safe to repeat.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
    }
    if redis_url is None and not sentinels:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    if sentinels:
        from redis.sentinel import Sentinel

        url_options = redis.connection.parse_url(redis_url) if redis_url else {}
        url_options.pop("host", None)
        url_options.pop("port", None)
        addresses = [(host, int(port)) for host, _, port in (item.rpartition(":") for item in sentinels)]
        sentinel = Sentinel(
            addresses,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            sentinel_kwargs={"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds},
        )
        options.pop("max_connections")
        return sentinel.master_for(sentinel_service, **url_options, **options)
    if cluster:
        from redis.cluster import RedisCluster

        options.pop("health_check_interval")
        return RedisCluster.from_url(redis_url, **options)
    return redis.Redis.from_url(redis_url, **options)


class TokenStore:
    """Records and their indexes in one Redis (or Cluster slot), under one key prefix."""

    def __init__(
        self,
        client: Any,
        key_prefix: str = "sessionsvc",
        retention_seconds: int = 86400,
        idempotency_seconds: int = 86400,
    ):
        self.client = client
        self.root = "{" + key_prefix + "}"
        self.retention_ms = retention_seconds * 1000
        self.idempotency_ms = max(1, idempotency_seconds) * 1000
        self._gen_key = [self.root + ":gen"]
        self._scripts = {name: client.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()}
        self._id_lock = threading.Lock()
        self._next_number = 0
        self._block_end = 0

    # --- plumbing ------------------------------------------------------------------

    def _call(self, command: Callable[[], Any], retry: bool = False) -> Any:
        """Run one Redis call; Redis saying "not now" becomes StoreUnavailable.

        With `retry` (only for calls safe to repeat), a failed or reset connection is
        retried up to READ_RETRIES times after a jittered backoff; timeouts, LOADING and
        an exhausted pool are not, so no call waits much longer than one timeout.
        """
        failures = 0
        while True:
            try:
                return command()
            except RedisError as error:
                kind = _unavailable_kind(error)
                if kind is None:
                    raise
                if not (retry and kind == "connection" and failures < READ_RETRIES):
                    raise StoreUnavailable(kind) from None
                failures += 1
                time.sleep(BACKOFF.compute(failures))

    def _run(self, name: str, *args: Any, retry: bool = False) -> Any:
        script = self._scripts[name]
        return self._call(lambda: script(keys=self._gen_key, args=[self.root, *args]), retry)

    @staticmethod
    def _record(now_ms: int, fields: list, sealed: bytes | None = None) -> Record:
        number, user, preview, expires, saved, created, version, reveals, revealed = fields
        expires = int(expires)
        return Record(
            number=int(number),
            user_id=user.decode("ascii"),
            token_preview=preview.decode("ascii"),
            expires_at=expires,
            saved_at=int(saved),
            created_at=int(created),
            version=int(version),
            seconds_remaining=max(0, (expires * 1000 - now_ms) // 1000),
            reveal_count=int(reveals or 0),
            last_revealed_at=int(revealed) if revealed else None,
            sealed_token=sealed,
        )

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except RedisError:
            raise StoreUnavailable("error") from None

    # --- ids -----------------------------------------------------------------------

    def reserve_number(self) -> int:
        """A record number no other caller will ever get (ids are allocated in blocks).

        The lock guards only the block in memory, never a Redis call: callers that find
        the block used up each fetch their own, so on a stalled Redis they time out side
        by side instead of one after another. A block fetched while another caller was
        refilling gives one number and drops the rest (ids may skip, never repeat).
        """
        with self._id_lock:
            if self._next_number < self._block_end:
                self._next_number += 1
                return self._next_number - 1
        end = int(self._call(lambda: self.client.incrby(self.root + ":ids", ID_BLOCK), retry=True))
        first = end - ID_BLOCK + 1
        with self._id_lock:
            if self._next_number >= self._block_end:
                self._next_number, self._block_end = first + 1, end + 1
        return first

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
        """Store a new record. With an idempotency claim, a key already used for the same
        request answers the record it created then (``replayed``) and stores nothing;
        for another request it raises IdempotencyConflict."""
        key_hash, digests = "", ""
        if idempotency is not None:
            key_hash = hashlib.sha256(idempotency.key.encode("utf-8")).hexdigest()
            digests = " ".join(idempotency.digests)
        reply = self._run(
            "create", number, user_id, sealed, preview, expires_at, self.retention_ms, PRUNE_BATCH,
            key_hash, digests, self.idempotency_ms,
            retry=idempotency is not None,
        )
        if reply[0] == -1:
            raise IdempotencyConflict()
        if reply[0] == -2:
            raise AlreadyExpired()
        record = self._record(reply[1], reply[2])
        return replace(record, replayed=True) if reply[0] == 2 else record

    def owner(self, number: int) -> str | None:
        user = self._run("owner", number, retry=True)
        return user.decode("ascii") if user else None

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
        return self._record(reply[1], reply[2])

    def get(self, number: int, reveal: bool = False) -> Record | None:
        reply = self._run("get", number, "1" if reveal else "0", retry=not reveal)
        return self._record(reply[0], reply[1], reply[2]) if len(reply) > 1 else None

    def current(self, user_id: str | None = None, reveal: bool = False) -> Record | None:
        reply = self._run("current", user_id or "", PRUNE_BATCH, "1" if reveal else "0", retry=not reveal)
        if len(reply) == 1:
            return None
        return self._record(reply[0], reply[1], reply[2] if len(reply) > 2 else None)

    def page(self, offset: int, limit: int, user_id: str | None = None) -> tuple[int, list[Record]]:
        reply = self._run("page", user_id or "", offset, limit, PRUNE_BATCH, retry=True)
        now_ms = reply[0]
        return int(reply[1]), [self._record(now_ms, fields) for fields in reply[2:]]

    def delete(self, number: int) -> bool:
        return bool(self._run("delete", number))

    def clear(self, user_id: str | None = None) -> int:
        """Make every record (or one user's) invisible at once; returns how many were live."""
        if user_id:
            return int(self._run("clear_user", user_id))
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


StoreFactory = Callable[[], TokenStore]
