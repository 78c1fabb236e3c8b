"""The token store: the only package that speaks Redis. This docstring is its design: the
keys, the commands of every operation, the topologies and the failures. The code:

- ``records``: what the store returns (``Record``, a page's ``Listed``, ``Census``,
  ``IndexReport``), record ids, and the errors it raises (``NotFound``, ``StoreUnavailable``, ...);
- ``operations``: ``TokenStore``, the operations that serve requests;
- ``events``: reading the event stream, waiting on it, and the expiry sweep;
- ``maintenance``: the operations for operators and monitoring (readiness, census,
  scan/reseal, reclaim, check-index);
- ``runner``: running a script: retries, replica reads, WAIT for replica acks;
- ``ids``: record numbers reserved in blocks, and the per-process owner cache;
- ``scripts``: the Lua, and the codes its replies start with;
- ``client``: Redis clients per topology, and which failures mean "not now";
- ``shards``: one store over S shard stores (``ShardedStore``), and ``open_store``;
- ``feed``: the whole store's event feed over S shards' streams, and its cursor.

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
``{P}:r:<n>``                   hash     record ``n``: ``u`` user id, ``p`` preview, ``e``
                                         expires_at (unix s), ``s`` saved_at, ``c``
                                         created_at, ``o`` save number (also the ETag),
                                         ``g`` generation, ``rc``/``rl`` reveal count and
                                         last reveal (unix s), ``k`` the number of chunks
                                         of the sealed token and the chunks ``t``, ``t1``,
                                         ``t2``, ... (``TOKEN_CHUNK`` = 64 bytes each, the
                                         last shorter; see *Record encoding*).
                                         PEXPIREAT = expires_at + retention.
``{P}:all:G``                   zset     member ``n``, score save number: the listing
``{P}:u:G:<user>``              zset     member ``n``, score save number: one user's listing
                                         (trusted no further than each record's ``u``)
``{P}:exp:G``                   zset     member ``n:<user>``, score the record's death
                                         (ms, = its PEXPIREAT): finds index entries of
                                         records Redis has expired
``{P}:due:G``                   zset     member ``n:<user>``, score the record's expires_at
                                         (ms): the expiries not yet told. An entry leaves
                                         when its ``expired`` event is written (same
                                         script), or with its record (delete, eviction,
                                         clear); a refresh moves it. Outlives its record
                                         (retention 0) until told.
``{P}:events``                  stream   the event stream: one entry per change, written
                                         by the script that makes the change (XADD
                                         MAXLEN ~ ``SESSIONSVC_EVENTS_MAXLEN``). Fields
                                         ``type`` (created, refreshed, deleted, cleared,
                                         evicted, expired), ``n`` record number, ``u``
                                         user, ``e`` expires_at (unix s), ``c`` count
                                         and ``k`` record kept (``cleared``). Never a
                                         token or its preview. The entry id (Redis time
                                         in ms - sequence) is the event's cursor and time.
``{P}:sweeper``                 hash     the expiry sweeper's lease: ``h`` the holder's
                                         random name. PEXPIRE = the lease (3 s), renewed
                                         by its holder at every tick.
``{P}:layout``                  hash     ``shards``: the store's number of shards S, written
                                         once (HSET when absent) by the first process to
                                         start; absent in a store written before sharding
                                         (its ``ids`` exists: S = 1)
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

Record encoding
---------------
Redis keeps a hash as one compact listpack while it has at most ``hash-max-listpack-entries``
fields (128) and none of its values is longer than ``hash-max-listpack-value`` (64 bytes):
these are the server's defaults, and nothing here assumes other settings. A sealed token is
longer than 64 bytes (29 bytes of key id, nonce and tag, plus the token), so it is stored in
chunks of at most 64 bytes, and a record stays a listpack up to tokens of about 7,700
characters (8,192 are allowed: such a record is a hashtable, as correct and larger). A
listpack record takes about 190 bytes beyond its sealed token (MEMORY USAGE, key included),
a hashtable record about 560; it costs reads a few tenths of a microsecond more per record
(its fields are found by a scan, in the order they are written: the fields read first, the
token last). A read of a token asks for its first ``TOKEN_PREFETCH`` (16) chunks with the
record's other fields, in one HMGET (tokens up to about 990 characters), and for the rest in
a second one.

A record written before tokens were chunked has all of its token in ``t`` and no ``k``:
every script reads it as such, and the next write of its token (refresh, or reseal by
``rotate-keys``) stores it in chunks. A store needs no migration: records never rewritten
keep the old form until they expire. A process of an older version would read only the
first chunk of a new record's token (and fail to open it, as a damaged one): upgrade every
process of a store together. An operator whose tokens are long may raise
``hash-max-listpack-value`` (and the store then makes no difference); see
docs/benchmarks.md, "Memory per record", for what each structure costs.

Sharding (``SESSIONSVC_SHARDS`` = S > 1)
----------------------------------------
The store is S shard stores. Shard k has the prefix ``P/k`` (or ``P/k.n``, see below),
so its keys are the table's under the hash tag ``{P/k}`` (``{P/k}:r:<n>``,
``{P/k}:all:G``, ``{P/k}:ids``, ...): one slot per shard, every script above unchanged and
run on one shard. A '/' never occurs in a configured prefix, so no other store's tag can
look like a shard's. The tag of shard k hashes into the k-th of S equal ranges of the
16384 Cluster slots (``.n``: the smallest n that makes it so, when ``P/k`` does not), so
a cluster whose slots are split evenly over its masters holds S/M shards on each.
Placement:

- a user's records, indexes and idempotency records are all in shard
  ``SHA-1(UTF-8 user id)[:8] mod S`` (big-endian), so per-user operations stay one script;
- record ``n`` is in shard ``n mod S``: shard k reserves local numbers from ``{P/k}:ids``
  and gives the record number local × S + k (never reused, unique across shards);
- ``{P}:saves`` (the store-wide save counter) and ``{P}:layout`` keep the prefix's own
  tag: a slot of their own. The shards' ``saves`` keys are not used.

With S = 1 the store is exactly the single-tag layout above (``{P}``), plus ``layout``.

Commands that change with shards (the rest are routed to one shard and run as above):

- create / refresh: ``INCRBY {P}:saves 1`` first (a pipeline; with an idempotency key
  also ``EXISTS {P/j}:idem:<k>`` for every other shard j: a key used for another user's
  record is refused; with ``min_replicas_ack`` then ``WAIT``), one more round-trip; then the
  shard's script with that save number as its last ARGV. A refresh's number never takes
  the record's version below its current one (``max(given, o + 1)``).
- bulk load: one ``INCRBY {P}:saves <count>``, then each shard's creates pipelined.
- current / validity (whole store): the current script (no reveal) on every shard in one
  pipeline, the highest save number wins; ``current`` then reads its token with the get
  script (counting the reveal) on that shard: two round-trips.
- page (whole store): the page script on every shard in one pipeline, for the shard's
  first offset + limit records, merged by save number; the total is the shards' totals
  added up. offset + limit above ``max_global_depth(S)`` (``GLOBAL_PAGE_ENTRIES`` / S
  entries from each shard, at least 100) is refused (``PageTooDeep``) unless
  the page lies past the end (asked with an offset past any store: totals only, at once).
- clear (all): the clear-all script on every shard in one pipeline (O(1) each). Once it
  has answered no read returns a record saved before it; while that round-trip is in
  flight, reads of different shards may see one shard cleared and another not yet.
- events (whole store): the events script on every shard in one pipeline, each from its
  own place, merged by time (``feed``: the cursor names a place in every shard's stream).
- census, encryptions: every shard's, in one pipeline, added up. reclaim, scan, check-index:
  shard after shard.
- start-up: the layout script (HGET layout; EXISTS ids; HSET layout) on ``{P}``; a process
  whose S differs refuses to start (``ShardCountMismatch``).

Rate-limit counters (flask-limiter, only when ``SESSIONSVC_RATE_LIMIT`` is set) share this
Redis under ``P:limits:...`` (no braces: they are per client, not per store slot); they are
written by flask-limiter through the store's connection pool, never by this module.

Every record is in exactly the three indexes of its generation (and in ``due`` until its
expiry is told), and every change to a record, its index entries and its event happens in
one Lua script, so no reader or crash can see one without the other. Redis alone deletes
records (their TTL); index entries of records it has expired are pruned by the scripts, at
most ``PRUNE_BATCH`` per call, so a burst of expiries is absorbed over many requests:
by every create and refresh, and by a read only when it finds dead entries (a page whose
ZCOUNT on ``exp`` is not 0, a current whose first entry is not the answer). While some
remain, counts subtract them exactly (ZCOUNT on ``exp``) and pages skip them, so an
expired record is never counted or listed.

Every script carries only the pieces of the shared prelude that its body uses
(``scripts.PIECES``): a Lua local function is a closure built on every call, ``gen`` is a
GET and ``now`` a TIME, so what a script does not need it does not run. Inside a script
each ``redis.call`` costs about as much as the command itself and more (its arguments and
reply are converted): the scripts below read a record with one HMGET and write one with one
HSET.

No read walks an index. While at most ``DEAD_WINDOW`` entries are dead, a page finds their
ranks and maps itself to exact positions; beyond that, a read passes over at most
``WALK_BUDGET`` entries, and one that would need more answers ``CATCHING_UP`` (the store
raises ``StoreUnavailable("catching_up")``: 503 and Retry-After). Its own prune made
progress, so a retry converges.

Reads scoped to a user (current, validity, page, clear) check each record's owner ``u``:
an entry of ``u:G:<user>`` naming another user's record is passed over (logged by id,
never with a token) and, on the primary, removed from that index; clear never deletes
that record.

Events
------
Every change appends its event in the same script, so no reader ever sees one without the
other, and an idempotent replay or a refusal (which change nothing) appends none. A
create over the per-user limit appends ``evicted`` per record evicted, then ``created``;
a clear appends one ``cleared`` (with ``u`` for one user's, ``k`` for the record kept).
Expiries are told from ``due``: every write first tells up to ``DUE_BATCH`` that have come
(so no change is told before an expiry that came first), and each app process runs a
sweeper thread that, while holding the lease, tells the rest within about a second
(``sweeper.py``). Whoever tells an expiry takes its ``due`` entry in the same script:
each expiry is told exactly once, however many processes sweep. The stream is trimmed
approximately (whole stream nodes) to about ``SESSIONSVC_EVENTS_MAXLEN`` entries; a read
after a cursor older than the oldest entry held, once anything has been trimmed
(``entries-added`` > ``length`` in XINFO STREAM), answers ``TRIMMED`` (410) instead of
skipping what was lost.

Time always comes from Redis (``TIME`` inside the scripts), so ``is_valid`` and
``seconds_remaining`` agree across app hosts whatever their clocks say.

Commands per operation (each is one EVALSHA with KEYS = gen, slot-guard: one round-trip)
-----------------------------------------------------------------------------------------
- reserve ids: ``INCRBY {P}:ids <block>`` once per ``ID_BLOCK`` creations (the id is
  needed before the script, to bind the ciphertext to it).
- create: GET gen, TIME, HINCRBY seals, [HMGET idem: held -> answer the stored snapshot, or refuse a
  different digest], EXISTS record, tell due expiries (ZRANGEBYSCORE due LIMIT
  ``DUE_BATCH`` [+ XADD + ZREM]), prune, [per-user limit: ZCARD user index; when at the
  limit, ZCOUNT exp [+ ``dead_ranks`` while entries are dead, or, past ``DEAD_WINDOW``,
  a walk of an index of at most ``WALK_BUDGET`` entries, else ``CATCHING_UP``]; over it:
  refuse (``USER_LIMIT``), or ZRANGE the user index from the lowest save number, HMGET
  [+ ZSCORE exp] per entry, UNLINK + ZREM x4 + XADD per record evicted, at most
  ``WALK_BUDGET``], INCR saves, HSET (every field, the token's chunks included) +
  PEXPIREAT record, ZADD x4, [HSET + PEXPIRE idem], XADD, [EXISTS reclaim: reclaim]. It
  answers the record from what it wrote (no read back). The check and the record happen in one script, so two processes
  racing with one key create one record, and any number racing for one user never leave
  more than the limit.
- bulk load (``create_many``): SCRIPT EXISTS (LOAD of any missing), then the create
  script per record, pipelined, one round-trip per ``BULK_BATCH`` records.
- refresh: GET gen, TIME, HINCRBY seals, HMGET (exists, same generation, owner, version,
  the fields it answers, its number of chunks), ZSCORE exp (not dead by the script's clock,
  to the millisecond), tell due expiries, INCR saves, HSET [+ HDEL of chunks past the new
  token's] + PEXPIREAT, ZADD x4 (same members, new scores), XADD, prune, [EXISTS reclaim]. The existence check and the
  writes are one script, and Redis treats a key whose TTL passed before the script started
  as gone, so a refresh can neither revive a record past retention nor leave a hash
  without a TTL.
  The caller must name the owner (the ciphertext is bound to it): ``owner`` answers from
  a per-process cache of record number -> user id filled by every record the store
  returns, and only on a miss runs its script (GET gen, HMGET), a second round-trip.
- get: GET gen, TIME, HMGET (fields and first 16 chunks) [+ HMGET of the other chunks]
  [+ HSET of both reveal counters when revealing].
- current / validity: GET gen, TIME, ZREVRANGE 0 0 of the (user) index, HMGET (with the
  first 16 chunks when revealing) [+ ZSCORE exp if that record has expired: is it dead by the
  script's clock?] [+ HMGET of the other chunks, HSET of the reveal counters]: the answer
  whenever the top entry names a live record of that user. Otherwise prune, then
  ZREVRANGE 16 at a time from the top, HMGET [+ ZSCORE exp] per entry until a live record
  of that user, at most ``DEAD_WINDOW + WALK_BUDGET`` entries in all (else
  ``CATCHING_UP``) [+ ZREM of entries naming another user's record].
- page: GET gen, TIME, ZCOUNT exp [+ prune when it is not 0], ZCARD; while entries are
  dead (at most ``DEAD_WINDOW``), ZRANGEBYSCORE exp LIMIT ``DEAD_WINDOW`` + ZREVRANK per
  dead entry of this index: the exact total and the page's exact positions. A page past
  the total answers there; otherwise ZREVRANGE of those positions, HMGET of the six fields
  a listing needs (u p e s o g) [+ ZSCORE exp of an expired record, while entries are dead]
  per entry
  (owner checked as for current). O(log N + limit), plus ``DEAD_WINDOW`` ranks. More
  dead entries than that: the whole-store page walks from the top (total ZCARD - ZCOUNT),
  a user's page reads their whole index, each within ``WALK_BUDGET`` entries (else
  ``CATCHING_UP``).
- delete: GET gen, HMGET, tell due expiries, UNLINK record, ZREM x4, XADD.
- clear (all): tell due expiries, ZCARD, ZCOUNT, INCR gen, SADD reclaim, XADD. O(1): the
  old generation becomes invisible at once; ``reclaim`` frees its keys afterwards in
  bounded batches (ZRANGE exp + UNLINK/ZREM per entry, UNLINK of ``due`` at the end), also
  a little at every save.
- clear (one user [but ``keep``]): [HMGET + ZSCORE exp of ``keep``: held by that user, or
  ``KEEP_NOT_HELD`` and nothing changes], tell due expiries, ZRANGE the user's index, HGET
  u per entry, UNLINK + ZREM x3 per record of that user, UNLINK the index [+ ZADD of
  ``keep``], XADD.
- events: [XRANGE - + COUNT 1 and, when the cursor is older, XINFO STREAM], XRANGE
  ``(<cursor>`` + COUNT ``limit`` (unfiltered) or ``EVENTS_SCAN_BUDGET`` (filtered).
- wait for events (Server-Sent Events): XREAD COUNT 1 BLOCK (shorter than the socket
  timeout) STREAMS events <cursor>, not a script.
- sweep (the sweeper, every second in every process): HGET sweeper, [HSET + PEXPIRE
  sweeper; ZRANGEBYSCORE due LIMIT batch, XADD per expiry told, ZREM due]. Release:
  HGET + DEL sweeper.

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
  batch of records, HMGET + PTTL + ZSCORE x3 (+ due while unexpired) (repair: PEXPIREAT,
  ZADD x3 (+ due), UNLINK of
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

from .client import connect
from .ids import ID_BLOCK, OWNER_CACHE_SIZE
from .operations import PRUNE_BATCH, TokenStore
from .records import (
    AlreadyExpired,
    BadCursor,
    Census,
    Event,
    EventPage,
    EventsTrimmed,
    IdempotencyClaim,
    IdempotencyConflict,
    IndexReport,
    Listed,
    NotFound,
    NumberInUse,
    PageTooDeep,
    PreconditionFailed,
    Record,
    ShardCountMismatch,
    StoreUnavailable,
    UserLimitReached,
    format_id,
    parse_id,
)
from .scripts import DEAD_WINDOW, WALK_BUDGET, script_source
from .shards import ShardedStore, check_shard_count, max_global_depth, open_store, shard_of_user

# What the vault talks to: one interface, whatever the number of shards.
Store = TokenStore | ShardedStore

__all__ = [
    "DEAD_WINDOW", "WALK_BUDGET", "AlreadyExpired", "BadCursor", "Census", "Event", "EventPage", "EventsTrimmed",
    "IdempotencyClaim", "IdempotencyConflict", "IndexReport", "Listed", "NotFound", "NumberInUse", "PageTooDeep",
    "PreconditionFailed", "Record", "ShardCountMismatch", "ShardedStore", "Store", "StoreUnavailable", "TokenStore",
    "UserLimitReached", "check_shard_count", "connect", "format_id", "max_global_depth", "open_store", "parse_id",
    "shard_of_user",
    # The benchmark's same-work baseline (bench/) runs the store's own scripts with the
    # store's arguments: their text and the batch sizes are public for that, and only that.
    "ID_BLOCK", "OWNER_CACHE_SIZE", "PRUNE_BATCH", "script_source",
]
