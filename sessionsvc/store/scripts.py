"""The store's Lua scripts, registered once per client by ``runner.ScriptRunner``.

Each script is the pieces of the shared prelude its body names (key names, Redis time,
pruning, reclaiming, loading a record: ``PIECES``) followed by one operation's body; the
comment above each body names its ARGV and its reply. The key layout they work on is documented in ``sessionsvc.store``.
"""

from __future__ import annotations

import re

# Every script gets KEYS[1] = {P}:gen (which routes it to the store's slot), KEYS[2] =
# {P}:slot-guard (never written; see ScriptRunner) and ARGV[1] = {P}; the other keys share
# the hash tag and are built from it.

# The codes a script's reply starts with, defined here once: the prelude declares each
# group as a Lua table of the same name, so both sides write `CreateReply.REPLAYED`.
# Plain classes, not IntEnums: Python compares them on every reply, and an enum
# member's lookup goes through a descriptor.


class ReadReply:
    """current and page. CATCHING_UP: the answer lies past more dead index entries than
    a read may pass over; each call's prune brings the store closer, so a retry converges."""

    ANSWERED = 1
    CATCHING_UP = 0


class CreateReply:
    CREATED = 1
    REPLAYED = 2  # the idempotency key's earlier record, answered again
    IDEMPOTENCY_CONFLICT = -1  # the key was used for another request
    ALREADY_EXPIRED = -2  # dead by Redis's clock before it is stored
    USER_LIMIT = -3  # the user holds the most records allowed (policy reject)
    CATCHING_UP = -4  # more dead entries than a save may pass over to count the user's records


class RefreshReply:
    REFRESHED = 1
    NOT_FOUND = 0
    PRECONDITION_FAILED = -1  # followed by the record's version
    ALREADY_EXPIRED = -2


class ClearReply:
    CLEARED = 1
    KEEP_NOT_HELD = 0  # the record to keep is not a held record of that user: nothing cleared


class EventsReply:
    READ = 1  # followed by the cursor to read on from, then the events; more may follow them
    END = 2  # as READ, and every entry after the cursor was read: the stream ends there
    TRIMMED = 0  # the cursor is older than the oldest event held; followed by that event's cursor


class SweepReply:
    SWEPT = 1
    NOT_HOLDER = 0  # another process holds the sweeper lease


# The error create answers when its reserved number already holds a record.
NUMBER_IN_USE = "record number in use"

# Dead index entries (records past retention, not yet pruned) a read locates exactly: up to
# this many, pages and totals are exact at any depth.
DEAD_WINDOW = 256
# Index entries a read may pass over beyond that: entries naming another user's record,
# and dead entries while more than DEAD_WINDOW wait.
WALK_BUDGET = 512
# Expiries a write script tells (and takes out of `due`) before its own change, so that no
# change is told before an expiry that came first; the sweeper takes larger batches.
DUE_BATCH = 64
# The most bytes of a sealed token one record field holds. Redis keeps a hash whose values
# are all at most `hash-max-listpack-value` bytes (64 unless the server says otherwise) as
# one compact listpack: about a third of the memory of a hashtable. A token is stored in
# chunks of this size so that its record stays one (see *Key layout* in sessionsvc.store).
TOKEN_CHUNK = 64
# The chunks a read of a record's token asks for with its other fields, in one HMGET: up to
# 1,024 bytes sealed (tokens of about 990 characters), the rest in a second HMGET. A chunk
# asked for and absent costs a scan of a short listpack; a second HMGET costs more.
TOKEN_PREFETCH = 16


def _reply_codes(*groups: type) -> dict[str, int]:
    return {f"{group.__name__}.{name}": value for group in groups for name, value in vars(group).items()
            if name.isupper()}


# `ReadReply.ANSWERED` and the like, written into the Lua as the numbers they stand for.
REPLY_CODES = _reply_codes(ReadReply, CreateReply, RefreshReply, ClearReply, EventsReply, SweepReply)

# The shared prelude, as named pieces: a script carries only the pieces its body names (and
# the pieces those name), in this order. Every piece a script carries runs on every call
# (a local function is a closure built per call, a key name a string built per call, and
# `gen` and `now` are a GET and a TIME), so a script that does not name a piece does not
# pay for it.
PIECES: dict[str, str] = {
    "NUMBER_IN_USE": f"local NUMBER_IN_USE = '{NUMBER_IN_USE}'",
    "DEAD_WINDOW": f"local DEAD_WINDOW = {DEAD_WINDOW}",
    "WALK_BUDGET": f"local WALK_BUDGET = {WALK_BUDGET}",
    "DUE_BATCH": f"local DUE_BATCH = {DUE_BATCH}",
    "TOKEN_CHUNK": f"local TOKEN_CHUNK = {TOKEN_CHUNK}",
    "TOKEN_PREFETCH": f"local TOKEN_PREFETCH = {TOKEN_PREFETCH}",
    "gen": "local gen = redis.call('GET', KEYS[1]) or '0'",
    "now": """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)""",
    "all_key": "local all_key = root .. ':all:' .. gen",
    "exp_key": "local exp_key = root .. ':exp:' .. gen",
    "due_key": "local due_key = root .. ':due:' .. gen",
    "reclaim_key": "local reclaim_key = root .. ':reclaim'",
    "events_key": "local events_key = root .. ':events'",
    "events_maxlen": """
-- The stream's approximate bound; a script that appends events sets it from its ARGV first.
local events_maxlen = nil""",
    "user_key": "local function user_key(user) return root .. ':u:' .. gen .. ':' .. user end",
    "rec_key": "local function rec_key(n) return root .. ':r:' .. n end",
    "ms": "local function ms(x) return string.format('%d', x) end",
    "split": """
local function split(member)
  local sep = string.find(member, ':', 1, true)
  return string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
end""",
    "emit": """
-- Append one event to the store's stream (fields: name, value, ...). Its entry id, from
-- Redis's clock, is the event's cursor and time.
local function emit(...)
  redis.call('XADD', events_key, 'MAXLEN', '~', events_maxlen, '*', ...)
end""",
    "record_event": """
local function record_event(kind, n, user, expires)
  emit('type', kind, 'n', n, 'u', user, 'e', expires)
end""",
    "expire_due": """
-- Tell up to `batch` expiries that have come (an `expired` event each) and take them out
-- of `due` in the same step: each expiry is told exactly once, whoever runs this.
local function expire_due(batch)
  local due = redis.call('ZRANGEBYSCORE', due_key, '-inf', ms(now), 'WITHSCORES', 'LIMIT', 0, batch)
  if #due == 0 then return 0 end
  local members = {}
  for i = 1, #due, 2 do
    local n, user = split(due[i])
    record_event('expired', n, user, ms(math.floor(tonumber(due[i + 1]) / 1000)))
    members[#members + 1] = due[i]
  end
  redis.call('ZREM', due_key, unpack(members))
  return #members
end""",
    "prune": """
-- Drop up to `batch` index entries whose records have passed retention.
local function prune(batch)
  local dead = redis.call('ZRANGEBYSCORE', exp_key, '-inf', ms(now), 'LIMIT', 0, batch)
  for _, member in ipairs(dead) do
    local n, user = split(member)
    redis.call('ZREM', all_key, n)
    redis.call('ZREM', user_key(user), n)
    redis.call('UNLINK', rec_key(n))
  end
  if #dead > 0 then
    redis.call('ZREM', exp_key, unpack(dead))
    redis.call('INCRBY', root .. ':pruned', #dead)
  end
  return #dead
end""",
    "reclaim": """
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
    redis.call('UNLINK', root .. ':all:' .. old, old_exp, root .. ':due:' .. old)
    redis.call('SREM', reclaim_key, old)
  end
  return #members
end""",
    "sealed_fields": """
-- A sealed token as record fields, appended to `fields`: 'k' the number of chunks, then
-- 't', 't1', 't2', ... of at most TOKEN_CHUNK bytes each. -> the number of chunks
local function sealed_fields(fields, blob)
  local count = math.max(1, math.ceil(#blob / TOKEN_CHUNK))
  fields[#fields + 1] = 'k'
  fields[#fields + 1] = count
  for i = 0, count - 1 do
    if i == 0 then fields[#fields + 1] = 't' else fields[#fields + 1] = 't' .. i end
    fields[#fields + 1] = string.sub(blob, i * TOKEN_CHUNK + 1, (i + 1) * TOKEN_CHUNK)
  end
  return count
end""",
    "drop_chunks": """
-- Remove the chunks past the first `count` of a record that held `held` of them (its 'k';
-- nil: one, or a record written before tokens were chunked).
local function drop_chunks(n, count, held)
  held = tonumber(held) or 1
  if held <= count then return end
  local names = {}
  for i = count, held - 1 do names[#names + 1] = 't' .. i end
  redis.call('HDEL', rec_key(n), unpack(names))
end""",
    "sealed_of": """
-- The sealed token of record `n`, its number of chunks `k` and its first `have` chunks
-- read with its other fields (`h[first]` is 't', `h[first + 1]` 't1', ...): the chunks
-- past those are read now. A record written before tokens were chunked has no 'k', and all
-- of its token in 't'. A chunk gone missing reads as empty: the token then fails to open,
-- as a damaged one does.
local function sealed_of(n, k, h, first, have)
  k = tonumber(k)
  if not h[first] or not k then return h[first] end
  if k == 1 then return h[first] end
  local parts = {}
  for i = 1, math.min(k, have) do parts[i] = h[first + i - 1] or '' end
  if k > have then
    local names = {}
    for i = have, k - 1 do names[#names + 1] = 't' .. i end
    local rest = redis.call('HMGET', rec_key(n), unpack(names))
    for i = 1, #names do parts[#parts + 1] = rest[i] or '' end
  end
  return table.concat(parts)
end""",
    "dead_by_now": """
-- Whether record `n` of `user`, expiring at `expires` (seconds), has passed retention by
-- this script's clock. A record dies (expires_at + retention) no earlier than it expires:
-- only one already expired has its death looked up (its `exp` entry).
local function dead_by_now(n, user, expires)
  if tonumber(expires) * 1000 > now then return false end
  local death = redis.call('ZSCORE', exp_key, n .. ':' .. user)
  return not death or tonumber(death) <= now
end""",
    "load": """
-- The record's fields {n, u, p, e, s, c, o, rc, rl} if it is held in the current
-- generation (and, when `check_death`, has not passed retention by this script's clock),
-- else nil; with `token`, its sealed token too (read by the same HMGET).
local function load(n, check_death, token)
  local h
  if token then
    h = redis.call('HMGET', rec_key(n), 'u', 'p', 'e', 's', 'c', 'o', 'rc', 'rl', 'g', 'k',
                   't', 't1', 't2', 't3', 't4', 't5', 't6', 't7', 't8', 't9', 't10', 't11', 't12', 't13',
                   't14', 't15')
  else
    h = redis.call('HMGET', rec_key(n), 'u', 'p', 'e', 's', 'c', 'o', 'rc', 'rl', 'g')
  end
  if not h[1] or h[9] ~= gen then return nil end
  if check_death and dead_by_now(n, h[1], h[3]) then return nil end
  local sealed = nil
  if token then sealed = sealed_of(n, h[10], h, 11, TOKEN_PREFETCH) end
  return {n, h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]}, sealed
end""",
    "load_listed": """
-- What a page lists of record `n`, {n, u, p, e, s, o} (o, the save number, orders a page of
-- the whole sharded store), held and alive as for `load`; six fields asked for, not nine.
local function load_listed(n, check_death)
  local h = redis.call('HMGET', rec_key(n), 'u', 'p', 'e', 's', 'o', 'g')
  if not h[1] or h[6] ~= gen then return nil end
  if check_death and dead_by_now(n, h[1], h[3]) then return nil end
  return {n, h[1], h[2], h[3], h[4], h[5]}
end""",
    "count_reveal": """
-- Count one reveal of a loaded record: its reveal count and last reveal, in Redis and in
-- the fields about to be returned (one HSET: the script reads and writes in one step).
local function count_reveal(n, record)
  record[8] = (tonumber(record[8]) or 0) + 1
  record[9] = math.floor(now / 1000)
  redis.call('HSET', rec_key(n), 'rc', record[8], 'rl', record[9])
end""",
    "index_add": """
-- `expires` nil: no `due` entry (its expiry has been told already).
local function index_add(n, user, save_number, death, expires)
  redis.call('ZADD', all_key, save_number, n)
  redis.call('ZADD', user_key(user), save_number, n)
  redis.call('ZADD', exp_key, ms(death), n .. ':' .. user)
  if expires then redis.call('ZADD', due_key, ms(expires * 1000), n .. ':' .. user) end
end""",
    "save_fields": """
-- Write a record's fields (`created`: a new record, its created_at; `held_chunks`: the
-- 'k' it had), its TTL and its index entries. -> its saved_at
-- A new record's fields go in the order `load` reads them, its token last: a listpack is
-- searched from its start. (The reveal counters, absent until a first reveal, are not
-- written as placeholders: 6 bytes that can tip the listpack into the allocator's next
-- size class, for about 0.1 µs per record read, measured.)
local function save_fields(n, user, blob, preview, expires, save_number, death, created, held_chunks)
  local saved = math.floor(now / 1000)
  local fields
  if created then
    fields = {'u', user, 'p', preview, 'e', expires, 's', saved, 'c', created, 'o', save_number, 'g', gen}
  else
    fields = {'u', user, 'p', preview, 'e', expires, 's', saved, 'o', save_number, 'g', gen}
  end
  local count = sealed_fields(fields, blob)
  redis.call('HSET', rec_key(n), unpack(fields))
  drop_chunks(n, count, held_chunks)
  redis.call('PEXPIREAT', rec_key(n), ms(death))
  index_add(n, user, save_number, death, expires)
  return saved
end""",
    "unindex": """
-- Delete a held record of this generation and all its index entries.
local function unindex(n, user)
  local member = n .. ':' .. user
  redis.call('UNLINK', rec_key(n))
  redis.call('ZREM', all_key, n)
  redis.call('ZREM', user_key(user), n)
  redis.call('ZREM', exp_key, member)
  redis.call('ZREM', due_key, member)
end""",
    "count_seal": """
-- One more encryption under the key that sealed `blob` (named by its '<key id>:' head):
-- AES-GCM with random nonces is safe for a bounded number of encryptions per key.
local function count_seal(blob)
  local key_id = string.match(blob, '^([a-z0-9_-]+):')
  if key_id then redis.call('HINCRBY', root .. ':seals', key_id, 1) end
end""",
    "next_save": """
-- The save number of a save: from this store's own counter, or `given` by a sharded
-- store (its counter lives in another slot). A given number never takes a record's version
-- below what it already was (`held`): two refreshes of one record may land in the other
-- order, and a failover may lose that counter's last increments.
local function next_save(given, held)
  if not given or given == '' then return redis.call('INCR', root .. ':saves') end
  return math.max(tonumber(given), (tonumber(held) or 0) + 1)
end""",
    "dead_count": """
local function dead_count()
  return redis.call('ZCOUNT', exp_key, '-inf', ms(now))
end""",
    "dead_after_prune": """
-- How many index entries are dead (their records past retention), after pruning up to
-- `batch` of them: a read prunes only when it finds some (batch 0: replicas never do).
local function dead_after_prune(batch)
  local dead = dead_count()
  if dead > 0 and batch > 0 then dead = dead - prune(batch) end
  return dead
end""",
    "dead_ranks": """
-- The ranks in `index` (highest score first) of its entries of dead records, ascending.
-- Complete only while at most DEAD_WINDOW entries are dead.
local function dead_ranks(index, user)
  local ranks = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', exp_key, '-inf', ms(now), 'LIMIT', 0, DEAD_WINDOW)) do
    local n, owner = split(member)
    if user == '' or owner == user then
      local rank = redis.call('ZREVRANK', index, n)
      if rank then ranks[#ranks + 1] = rank end
    end
  end
  table.sort(ranks)
  return ranks
end""",
    "walk": """
-- Up to `want` records of `index` from position `first` on (most recently saved first),
-- reading `chunk` entries, then as many as are still wanted (at least 16), and at most
-- `budget` in all. Passed over: entries whose record is not held (or is dead, when
-- `check_death`) and, in a user's index (`user` not ''), entries naming another user's
-- record, which are added to `foreign`. Each record is what `load_one(n, check_death)`
-- gives (`load` or `load_listed`); a sealed token it gives as well becomes the record's
-- tenth field. -> records, true when the index ended before `want` were found
local function walk(index, user, first, want, budget, chunk, check_death, foreign, load_one)
  local records, read = {}, 0
  while read < budget do
    local count = math.min(chunk, budget - read)
    local numbers = redis.call('ZREVRANGE', index, first + read, first + read + count - 1)
    read = read + count
    for _, n in ipairs(numbers) do
      local record, sealed = load_one(n, check_death)
      if record and user ~= '' and record[2] ~= user then
        foreign[#foreign + 1] = n
      elseif record then
        -- (Only a token is stored: in Lua 5.1 storing nil under a new key still makes
        -- room for it, a rehash of the table: 4 % of a page's instructions.)
        if sealed then record[10] = sealed end
        records[#records + 1] = record
        if #records == want then return records, false end
      end
    end
    if #numbers < count then return records, true end
    chunk = math.max(want - #records, 16)
  end
  return records, false
end""",
    "heal": """
-- Entries naming another user's record leave that user's index, on the primary only
-- (prune batch > 0); replicas just pass over them.
local function heal(user, foreign, batch)
  if batch > 0 and #foreign > 0 then redis.call('ZREM', user_key(user), unpack(foreign)) end
end""",
    "excess_over": """
-- How many records too many `user` would hold, under `limit`, with one more saved: the
-- size of their index less its dead entries (an entry naming another user's record
-- counts until a walk passes over it). nil while more entries are dead than a save may
-- locate (the caller answers CATCHING_UP; each save's prune brings that closer).
local function excess_over(user, limit)
  local index = user_key(user)
  local size = redis.call('ZCARD', index)
  if size < limit then return 0 end
  local dead = dead_count()
  if dead <= DEAD_WINDOW then
    if dead > 0 then size = size - #dead_ranks(index, user) end
    return size + 1 - limit
  end
  if size > WALK_BUDGET then return nil end
  local foreign = {}
  local records = walk(index, user, 0, size, size, size, true, foreign, load_listed)
  return #records + #foreign + 1 - limit
end""",
    "evict_oldest": """
-- Evict `user`'s least recently saved records (lowest save numbers first), `excess` of
-- them and at most WALK_BUDGET, with an `evicted` event each. Dead entries are passed
-- over (pruning takes them); an entry naming another user's record leaves the index and
-- counts as one gone.
local function evict_oldest(user, excess)
  local index = user_key(user)
  excess = math.min(excess, WALK_BUDGET)
  local passed, read = 0, 0
  while excess > 0 and read < DEAD_WINDOW + WALK_BUDGET do
    local numbers = redis.call('ZRANGE', index, passed, passed + excess + 15)
    if #numbers == 0 then return end
    for _, n in ipairs(numbers) do
      read = read + 1
      local record = load(n, true)
      if record and record[2] == user then
        unindex(n, user)
        record_event('evicted', n, user, record[4])
        excess = excess - 1
      elseif record then
        redis.call('ZREM', index, n)
        excess = excess - 1
      else
        passed = passed + 1
      end
      if excess == 0 then return end
    end
  end
end""",
}

_LUA_COMMENT_OR_STRING = re.compile(r"--[^\n]*|'[^'\n]*'|\"[^\"\n]*\"")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _names(lua: str) -> set[str]:
    """The identifiers a piece of Lua uses (comments and string literals left out)."""
    return set(_IDENTIFIER.findall(_LUA_COMMENT_OR_STRING.sub(" ", lua)))


if PIECES["load"].count("'t") != TOKEN_PREFETCH:
    raise RuntimeError("the load piece must read TOKEN_PREFETCH chunks")
# A piece names only pieces defined before it (Lua locals are seen only after their line).
if not all(list(PIECES).index(used) < list(PIECES).index(name)
           for name, lua in PIECES.items() for used in _names(lua) & PIECES.keys() if used != name):
    raise RuntimeError("a Lua piece names a piece defined after it")


def _closure(names: set[str], defined: set[str] = frozenset()) -> set[str]:
    """The pieces `names` need, with the pieces those need, less those already `defined`."""
    needed, pending = set(), (names & PIECES.keys()) - defined
    while pending:
        name = pending.pop()
        needed.add(name)
        pending |= (_names(PIECES[name]) & PIECES.keys()) - needed - defined - {name}
    return needed


def _definitions(names: set[str]) -> str:
    return "\n".join(PIECES[name].strip("\n") for name in PIECES if name in names)


# A line `-- pieces: a b` in a body defines pieces a and b (and what they need, unless the
# script defines it already) right there, in the block that uses them: a rarely taken branch
# so costs nothing until it is taken.
_DEFERRED = re.compile(r"^([ \t]*)-- pieces: (.*)$", re.MULTILINE)


def _assemble(body: str) -> str:
    """The full text of a script: `root`, the prelude's pieces its body needs, the body,
    with reply codes written as numbers."""
    deferred = {name for match in _DEFERRED.finditer(body) for name in match.group(2).split()}
    top = _closure(_names(body) - deferred)

    def expand(match: re.Match) -> str:
        indent = match.group(1)
        lua = _definitions(_closure(set(match.group(2).split()), top))
        return "\n".join(indent + line if line else line for line in lua.split("\n"))

    text = "local root = ARGV[1]\n" + _definitions(top) + "\n" + _DEFERRED.sub(expand, body)
    return re.sub(r"\b[A-Z][A-Za-z]*Reply\.[A-Z_]+\b", lambda match: str(REPLY_CODES[match.group(0)]), text)


# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       idempotency key hash ('' = none), request digests (space-separated, the first is
#       stored), idempotency window (ms), records per user (0 = no limit), policy over it
#       ('evict_oldest' | 'reject'), events maxlen, save number ('' or absent = this store's counter)
# -> {CREATED, now, record} | {REPLAYED, then, record} | {IDEMPOTENCY_CONFLICT}
#    | {ALREADY_EXPIRED} | {USER_LIMIT} | {CATCHING_UP} (CreateReply); error NUMBER_IN_USE
# Events: `expired` for expiries due (DUE_BATCH at most), `evicted` per record evicted,
# then `created`; none for a replay or a refusal.
_CREATE = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
local limit, batch = tonumber(ARGV[12]), tonumber(ARGV[8])
events_maxlen = ARGV[14]
count_seal(ARGV[4])  -- sealed for this call, whatever the outcome
local idem_key = nil
if ARGV[9] ~= '' then
  idem_key = root .. ':idem:' .. ARGV[9]
  local held = redis.call('HMGET', idem_key, 'f', 'at', 'n', 'u', 'p', 'e', 's', 'c', 'o')
  if held[1] then
    if not string.find(' ' .. ARGV[10] .. ' ', ' ' .. held[1] .. ' ', 1, true) then
      return {CreateReply.IDEMPOTENCY_CONFLICT}
    end
    local record = {held[3], held[4], held[5], held[6], held[7], held[8], held[9], false, false}
    return {CreateReply.REPLAYED, tonumber(held[2]), record}
  end
end
local death = expires * 1000 + tonumber(ARGV[7])
if death <= now then return {CreateReply.ALREADY_EXPIRED} end
if redis.call('EXISTS', rec_key(n)) == 1 then return redis.error_reply(NUMBER_IN_USE) end
expire_due(DUE_BATCH)
prune(batch)
if limit > 0 then
  -- pieces: excess_over evict_oldest
  local excess = excess_over(user, limit)
  if not excess then return {CreateReply.CATCHING_UP} end
  if excess > 0 then
    if ARGV[13] == 'reject' then return {CreateReply.USER_LIMIT} end
    evict_oldest(user, excess)
  end
end
local save_number = next_save(ARGV[15], nil)
local saved = save_fields(n, user, ARGV[4], ARGV[5], expires, save_number, death, math.floor(now / 1000))
local record = {n, user, ARGV[5], expires, saved, saved, save_number, false, false}
if idem_key then
  local digest = string.match(ARGV[10], '^%S+')
  redis.call('HSET', idem_key, 'f', digest, 'at', ms(now), 'n', n, 'u', user, 'p', ARGV[5], 'e', ARGV[6],
             's', saved, 'c', saved, 'o', save_number)
  redis.call('PEXPIRE', idem_key, ARGV[11])
end
record_event('created', n, user, ARGV[6])
if redis.call('EXISTS', reclaim_key) == 1 then
  -- pieces: reclaim
  reclaim(batch)
end
return {CreateReply.CREATED, now, record}
"""

# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       expected versions ('*' = any, else space-separated; none listed never matches),
#       events maxlen, save number ('' or absent = this store's counter)
# -> {REFRESHED, now, record} | {NOT_FOUND} | {PRECONDITION_FAILED, version}
#    | {ALREADY_EXPIRED} (RefreshReply)
# Events: `expired` for expiries due (DUE_BATCH at most, this record's included: it
# expired before it was refreshed), then `refreshed`.
_REFRESH = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
events_maxlen = ARGV[10]
count_seal(ARGV[4])  -- sealed for this call, whatever the outcome
local held = redis.call('HMGET', rec_key(n), 'u', 'g', 'o', 'c', 'rc', 'rl', 'k')
if not held[1] or held[2] ~= gen or held[1] ~= user then return {RefreshReply.NOT_FOUND} end
-- Redis expires a key only once its time is strictly past (and by the script's start
-- time); by this store's clock a record is dead from its death on: never revive it.
local held_death = redis.call('ZSCORE', exp_key, n .. ':' .. user)
if not held_death or tonumber(held_death) <= now then return {RefreshReply.NOT_FOUND} end
if ARGV[9] ~= '*' and not string.find(' ' .. ARGV[9] .. ' ', ' ' .. held[3] .. ' ', 1, true) then
  return {RefreshReply.PRECONDITION_FAILED, tonumber(held[3])}
end
local death = expires * 1000 + tonumber(ARGV[7])
if death <= now then return {RefreshReply.ALREADY_EXPIRED} end
expire_due(DUE_BATCH)
local save_number = next_save(ARGV[11], held[3])
local saved = save_fields(n, user, ARGV[4], ARGV[5], expires, save_number, death, nil, held[7])
record_event('refreshed', n, user, ARGV[6])
prune(tonumber(ARGV[8]))
if redis.call('EXISTS', reclaim_key) == 1 then
  -- pieces: reclaim
  reclaim(tonumber(ARGV[8]))
end
return {RefreshReply.REFRESHED, now, {n, user, ARGV[5], expires, saved, held[4], save_number, held[5], held[6]}}
"""

# ARGV: root, n, reveal ('1' counts a reveal; '0' writes nothing) -> {now, record, sealed token} | {now}
_GET = """
local n = ARGV[2]
local record, sealed = load(n, false, true)
if not record then return {now} end
if ARGV[3] == '1' then count_reveal(n, record) end
return {now, record, sealed}
"""

# ARGV: root, n -> user id | false
_OWNER = """
local held = redis.call('HMGET', rec_key(ARGV[2]), 'u', 'g')
if not held[1] or held[2] ~= gen then return false end
return held[1]
"""

# ARGV: root, user ('' = all), prune batch, reveal ('1' returns the sealed token and
# counts a reveal, '2' returns it uncounted, '0' not at all)
# -> {ANSWERED, now, foreign, record[, sealed token]} | {ANSWERED, now, foreign} none held
#    | {CATCHING_UP, now, foreign} (ReadReply); foreign: numbers of entries naming another user's record
# With prune batch 0 and reveal '0' or '2' it writes nothing (so it runs on replicas).
_CURRENT = """
local batch, user = tonumber(ARGV[3]), ARGV[2]
local index = all_key
if user ~= '' then index = user_key(user) end
-- The top entry is the answer unless its record is gone, dead or another user's: it is
-- read alone (no count of dead entries is needed: the record read is checked). Otherwise
-- prune a batch (on the primary: a retry converges) and walk from the top, 16 entries at
-- a time; the budget (the top entry included) passes over every dead entry while at most
-- DEAD_WINDOW wait.
local token = ARGV[4] ~= '0'
local foreign = {}
local top = redis.call('ZREVRANGE', index, 0, 0)[1]
if not top then return {ReadReply.ANSWERED, now, foreign} end
local record, sealed = load(top, true, token)
if not record or (user ~= '' and record[2] ~= user) then
  -- pieces: prune walk heal
  if batch > 0 then prune(batch) end
  local function load_with_token(n, check_death) return load(n, check_death, token) end
  local records, ended = walk(index, user, 0, 1, DEAD_WINDOW + WALK_BUDGET - 1, 16, true, foreign,
                              load_with_token)
  heal(user, foreign, batch)
  record = records[1]
  if not record then
    if ended then return {ReadReply.ANSWERED, now, foreign} end
    return {ReadReply.CATCHING_UP, now, foreign}
  end
  sealed = record[10]
  record[10] = nil
end
if ARGV[4] == '0' then return {ReadReply.ANSWERED, now, foreign, record} end
if ARGV[4] == '1' then count_reveal(record[1], record) end
return {ReadReply.ANSWERED, now, foreign, record, sealed}
"""

# ARGV: root, user ('' = all), offset, limit, prune batch
# -> {ANSWERED, now, total, foreign, listed record {n, u, p, e, s, o}...} | {CATCHING_UP, now, 0, foreign}
#    (ReadReply)
#    foreign: numbers of entries naming another user's record (passed over)
# With prune batch 0 it writes nothing (so it runs on replicas).
_PAGE = """
local batch, user, offset, limit = tonumber(ARGV[5]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local dead = dead_after_prune(batch)
local index = all_key
if user ~= '' then index = user_key(user) end
local size = redis.call('ZCARD', index)
local foreign, records, ended = {}, {}, false
local total, skip, want = 0, 0, limit
if dead <= DEAD_WINDOW then
  -- Every dead entry is known: their ranks map the page to exact positions.
  local ranks = {}
  if dead > 0 then
    -- pieces: dead_ranks
    ranks = dead_ranks(index, user)
  end
  total = size - #ranks
  if offset >= total then return {ReadReply.ANSWERED, now, total, foreign} end
  local first, last = offset, offset + limit - 1
  for _, rank in ipairs(ranks) do
    if rank <= first then
      first, last = first + 1, last + 1
    elseif rank <= last then
      last = last + 1
    end
  end
  records, ended = walk(index, user, first, limit, last - first + 1 + WALK_BUDGET, last - first + 1, dead > 0,
                        foreign, load_listed)
  total = total - #foreign
elseif user == '' then
  -- A burst of expiries outran pruning: the total is still exact; the page is found by
  -- walking from the top, within the budget.
  total = size - dead
  if offset >= total then return {ReadReply.ANSWERED, now, total, foreign} end
  skip, want = offset, offset + limit
  if want <= WALK_BUDGET or size <= WALK_BUDGET then
    records, ended = walk(index, user, 0, want, WALK_BUDGET, want, true, foreign, load_listed)
  end
elseif size <= WALK_BUDGET then
  -- A user's total is then known only by reading every entry of their index.
  skip, want = offset, size + 1
  records, ended = walk(index, user, 0, want, want, want, true, foreign, load_listed)
  total = #records
end
heal(user, foreign, batch)
if #records < want and not ended then return {ReadReply.CATCHING_UP, now, 0, foreign} end
local reply = {ReadReply.ANSWERED, now, total, foreign}
for i = skip + 1, math.min(#records, skip + limit) do reply[#reply + 1] = records[i] end
return reply
"""

# ARGV: root, n, events maxlen -> 1 deleted | 0 not held
# Events: `expired` for expiries due (DUE_BATCH at most), then `deleted` when one was.
_DELETE = """
local n = ARGV[2]
events_maxlen = ARGV[3]
local held = redis.call('HMGET', rec_key(n), 'u', 'g', 'e')
if not held[1] or held[2] ~= gen then return 0 end
expire_due(DUE_BATCH)
unindex(n, held[1])
record_event('deleted', n, held[1], held[3])
return 1
"""

# ARGV: root, events maxlen -> number of live records made invisible
# Events: `expired` for expiries due (DUE_BATCH at most), then one `cleared` with its count.
_CLEAR_ALL = """
events_maxlen = ARGV[2]
expire_due(DUE_BATCH)
local live = redis.call('ZCARD', all_key) - dead_count()
redis.call('INCR', KEYS[1])
if redis.call('EXISTS', exp_key) == 1 or redis.call('EXISTS', all_key) == 1 then
  redis.call('SADD', reclaim_key, gen)
end
emit('type', 'cleared', 'c', live)
return live
"""

# ARGV: root, user, record number to keep ('' = none), events maxlen
# -> {CLEARED, number of live records deleted, foreign} | {KEEP_NOT_HELD} (ClearReply)
#    foreign: numbers of entries naming another user's record (that record is left alone)
# Events: `expired` for expiries due (DUE_BATCH at most), then one `cleared` with the user,
# its count and the record kept (none when that is not held: nothing changed).
_CLEAR_USER = """
local user, keep = ARGV[2], ARGV[3]
events_maxlen = ARGV[4]
local kept = nil
if keep ~= '' then
  kept = load(keep, true)
  if not kept or kept[2] ~= user then return {ClearReply.KEEP_NOT_HELD} end
end
expire_due(DUE_BATCH)
local live, foreign = 0, {}
for _, n in ipairs(redis.call('ZRANGE', user_key(user), 0, -1)) do
  local owner = redis.call('HGET', rec_key(n), 'u')
  if owner and owner ~= user then
    foreign[#foreign + 1] = n
  elseif n ~= keep then
    local member = n .. ':' .. user
    local death = redis.call('ZSCORE', exp_key, member)
    if death and tonumber(death) > now then live = live + 1 end
    redis.call('UNLINK', rec_key(n))
    redis.call('ZREM', all_key, n)
    redis.call('ZREM', exp_key, member)
    redis.call('ZREM', due_key, member)
  end
end
redis.call('UNLINK', user_key(user))
if kept then
  redis.call('ZADD', user_key(user), kept[7], keep)
  emit('type', 'cleared', 'u', user, 'c', live, 'k', keep)
else
  emit('type', 'cleared', 'u', user, 'c', live)
end
return {ClearReply.CLEARED, live, foreign}
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
  local held = redis.call('HMGET', rec_key(n), 'u', 't', 'g', 'k')
  if held[1] and held[3] == gen then
    reply[#reply + 1] = n
    reply[#reply + 1] = held[1]
    reply[#reply + 1] = sealed_of(n, held[4], held, 2, 1)
  end
end
return reply
"""

# ARGV: root, n, old sealed token, new sealed token -> 1 replaced | 0 record changed meanwhile
_RESEAL = """
local n = ARGV[2]
count_seal(ARGV[4])
local held = redis.call('HMGET', rec_key(n), 't', 'g', 'k')
if held[2] ~= gen or sealed_of(n, held[3], held, 1, 1) ~= ARGV[3] then return 0 end
local fields = {}
local count = sealed_fields(fields, ARGV[4])
redis.call('HSET', rec_key(n), unpack(fields))
drop_chunks(n, count, held[3])
return 1
"""

# ARGV: root, sample size
# -> {live records, entries pruned so far, {key id, encryptions, ...}, sealed-token head...}
_CENSUS = """
local reply = {redis.call('ZCARD', all_key) - dead_count(),
               tonumber(redis.call('GET', root .. ':pruned') or '0'),
               redis.call('HGETALL', root .. ':seals')}
for _, n in ipairs(redis.call('ZRANDMEMBER', all_key, tonumber(ARGV[2]))) do
  local held = redis.call('HMGET', rec_key(n), 'g', 't')
  if held[1] == gen and held[2] then reply[#reply + 1] = string.sub(held[2], 1, tonumber(ARGV[3])) end
end
return reply
"""

# ARGV: root, batch -> index entries pruned
_PRUNE = """
return prune(tonumber(ARGV[2]))
"""

# ARGV: root, retention (ms), repair ('1' fixes), record number...
# -> {records missing from an index, records without a TTL, records of a stale generation}
_CHECK_RECORDS = """
local retention, repair = tonumber(ARGV[2]), ARGV[3] == '1'
local unindexed, no_ttl, stale = 0, 0, 0
for i = 4, #ARGV do
  local n = ARGV[i]
  local held = redis.call('HMGET', rec_key(n), 'u', 'g', 'o', 'e')
  local user = held[1]
  if user and held[2] ~= gen then
    if not held[2] or redis.call('SISMEMBER', reclaim_key, held[2]) == 0 then
      stale = stale + 1
      if repair then redis.call('UNLINK', rec_key(n)) end
    end
  elseif user then
    local ttl = redis.call('PTTL', rec_key(n))
    local death = now + ttl
    if ttl < 0 then
      no_ttl = no_ttl + 1
      death = tonumber(held[4] or '0') * 1000 + retention
      if repair then redis.call('PEXPIREAT', rec_key(n), ms(death)) end
    end
    -- A record whose expiry is still to come is due to be told.
    local expires = tonumber(held[4] or '0')
    if expires * 1000 <= now then expires = nil end
    if not redis.call('ZSCORE', all_key, n) or not redis.call('ZSCORE', user_key(user), n)
        or not redis.call('ZSCORE', exp_key, n .. ':' .. user)
        or (expires and not redis.call('ZSCORE', due_key, n .. ':' .. user)) then
      unindexed = unindexed + 1
      if repair then index_add(n, user, tonumber(held[3] or '0'), death, expires) end
    end
  end
end
return {unindexed, no_ttl, stale}
"""

# ARGV: root, repair ('1' removes), index ('all' | 'exp' | 'user'), user, position, count
# -> {entries read, entries whose record is not held}
_CHECK_ENTRIES = """
local repair, kind, user = ARGV[2] == '1', ARGV[3], ARGV[4]
local index = all_key
if kind == 'exp' then index = exp_key elseif kind == 'user' then index = user_key(user) end
local members = redis.call('ZRANGE', index, ARGV[5], ARGV[5] + ARGV[6] - 1)
local dangling = 0
for _, member in ipairs(members) do
  local n, owner = member, user
  if kind == 'exp' then n, owner = split(member) end
  local held = redis.call('HMGET', rec_key(n), 'u', 'g')
  if not held[1] or held[2] ~= gen or (kind ~= 'all' and held[1] ~= owner) then
    dangling = dangling + 1
    if repair then redis.call('ZREM', index, member) end
  end
end
return {#members, dangling}
"""

# ARGV: root, after (a cursor; '' = from the oldest event held), limit, scan budget,
#       user ('' = any), type ('' = any)
# -> {READ or END, next cursor, cursor, fields, cursor, fields, ...} | {TRIMMED, oldest cursor
#    held} (EventsReply; END: nothing after `next` yet). Without filters it reads `limit`
#    entries; with them, at most the scan budget, and `next` is the last entry read: a
#    filtered read never walks the stream without bound. A user filter also matches
#    whole-store clears (they clear that user's records too). `after` older than the
#    oldest entry held, once the stream has been trimmed, is TRIMMED: the reader may have
#    missed events, and is told so.
_EVENTS = """
local after, limit, budget, user, kind = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local function older(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms < b_ms or (a_ms == b_ms and tonumber(a_seq) < tonumber(b_seq))
end
local start = '-'
if after ~= '' then
  local first = redis.call('XRANGE', events_key, '-', '+', 'COUNT', 1)[1]
  if first and older(after, first[1]) then
    local info = redis.call('XINFO', 'STREAM', events_key)
    local length, added = 0, nil
    for i = 1, #info, 2 do
      if info[i] == 'length' then length = info[i + 1] elseif info[i] == 'entries-added' then added = info[i + 1] end
    end
    -- Redis before 7.0 does not count entries added: then any older cursor is told.
    if not added or added > length then return {EventsReply.TRIMMED, first[1]} end
  end
  start = '(' .. after
end
local filtered = user ~= '' or kind ~= ''
local count = limit
if filtered then count = budget end
local reply = {EventsReply.READ, after}
if after == '' then reply[2] = '0-0' end
local matched = 0
local read = redis.call('XRANGE', events_key, start, '+', 'COUNT', count)
if #read < count then reply[1] = EventsReply.END end
for i, entry in ipairs(read) do
  reply[2] = entry[1]
  local matches = true
  if filtered then
    local fields = {}
    for f = 1, #entry[2], 2 do fields[entry[2][f]] = entry[2][f + 1] end
    matches = (kind == '' or fields['type'] == kind) and (user == '' or fields['u'] == user or
              (fields['type'] == 'cleared' and not fields['u']))
  end
  if matches then
    reply[#reply + 1] = entry[1]
    reply[#reply + 1] = entry[2]
    matched = matched + 1
    if matched == limit then
      if i < #read then reply[1] = EventsReply.READ end
      break
    end
  end
end
return reply
"""

# ARGV: root, holder, lease (ms), batch, events maxlen
# -> {SWEPT, expiries told} | {NOT_HOLDER, 0} (SweepReply)
# Takes or renews the sweeper lease (`{P}:sweeper`, a hash so that no SET is needed) and, while holding it, tells up to
# `batch` expiries (`expire_due`). The lease only spares the other processes the work:
# each expiry leaves `due` as it is told, so it is told once whoever runs this.
_SWEEP = """
local lease_key = root .. ':sweeper'
local holder = redis.call('HGET', lease_key, 'h')
if holder and holder ~= ARGV[2] then return {SweepReply.NOT_HOLDER, 0} end
redis.call('HSET', lease_key, 'h', ARGV[2])
redis.call('PEXPIRE', lease_key, ARGV[3])
events_maxlen = ARGV[5]
return {SweepReply.SWEPT, expire_due(tonumber(ARGV[4]))}
"""

# ARGV: root, holder -> 1 released | 0 held by another process (or by none)
_RELEASE_SWEEPER = """
local lease_key = root .. ':sweeper'
if redis.call('HGET', lease_key, 'h') ~= ARGV[2] then return 0 end
redis.call('DEL', lease_key)
return 1
"""

SCRIPTS = {
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
    "census": _CENSUS,
    "prune": _PRUNE,
    "check_records": _CHECK_RECORDS,
    "check_entries": _CHECK_ENTRIES,
    "events": _EVENTS,
    "sweep": _SWEEP,
    "release_sweeper": _RELEASE_SWEEPER,
}

SOURCES = {name: _assemble(body) for name, body in SCRIPTS.items()}

# The store's layout, run on its own (no prelude). KEYS: {P}:layout, {P}:ids; ARGV: the
# configured number of shards -> the number the store has: recorded now when none was
# (1 for a store written before sharding, whose ids counter exists).
LAYOUT = """
local held = redis.call('HGET', KEYS[1], 'shards')
if held then return tonumber(held) end
local shards = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then shards = 1 end
redis.call('HSET', KEYS[1], 'shards', shards)
return shards
"""


def script_source(name: str) -> str:
    """The full Lua text of one of the store's scripts (the benchmark baseline runs them too)."""
    return SOURCES[name]


# Scripts that change records: with SESSIONSVC_MIN_REPLICAS_ACK they are followed by WAIT.
WRITES = frozenset({"create", "refresh", "delete", "clear_all", "clear_user", "reseal", "sweep"})
