"""The store's Lua scripts, registered once per client by ``runner.ScriptRunner``.

Each script is the shared prelude (key names, Redis time, pruning, reclaiming, loading a
record) followed by one operation's body; the comment above each body names its ARGV and
its reply. The key layout they work on is documented in ``sessionsvc.store``.
"""

from __future__ import annotations

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


class RefreshReply:
    REFRESHED = 1
    NOT_FOUND = 0
    PRECONDITION_FAILED = -1  # followed by the record's version
    ALREADY_EXPIRED = -2


# The error create answers when its reserved number already holds a record.
NUMBER_IN_USE = "record number in use"

# Dead index entries (records past retention, not yet pruned) a read locates exactly: up to
# this many, pages and totals are exact at any depth.
DEAD_WINDOW = 256
# Index entries a read may pass over beyond that: entries naming another user's record,
# and dead entries while more than DEAD_WINDOW wait.
WALK_BUDGET = 512


def _lua_table(codes: type) -> str:
    fields = ", ".join(f"{name} = {value}" for name, value in vars(codes).items() if name.isupper())
    return f"local {codes.__name__} = {{{fields}}}"


PRELUDE = f"""
{_lua_table(ReadReply)}
{_lua_table(CreateReply)}
{_lua_table(RefreshReply)}
local NUMBER_IN_USE = '{NUMBER_IN_USE}'
local DEAD_WINDOW, WALK_BUDGET = {DEAD_WINDOW}, {WALK_BUDGET}
""" + """
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
  if #dead > 0 then
    redis.call('ZREM', exp_key, unpack(dead))
    redis.call('INCRBY', root .. ':pruned', #dead)
  end
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

-- Count one reveal of a loaded record: its reveal count and last reveal, in Redis and in
-- the fields about to be returned.
local function count_reveal(n, record)
  record[8] = redis.call('HINCRBY', rec_key(n), 'rc', 1)
  record[9] = math.floor(now / 1000)
  redis.call('HSET', rec_key(n), 'rl', record[9])
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

-- One more encryption under the key that sealed `blob` (named by its '<key id>:' head):
-- AES-GCM with random nonces is safe for a bounded number of encryptions per key.
local function count_seal(blob)
  local key_id = string.match(blob, '^([a-z0-9_-]+):')
  if key_id then redis.call('HINCRBY', root .. ':seals', key_id, 1) end
end

-- The save number of a save: from this store's own counter, or `given` by a sharded
-- store (its counter lives in another slot). A given number never takes a record's version
-- below what it already was (`held`): two refreshes of one record may land in the other
-- order, and a failover may lose that counter's last increments.
local function next_save(given, held)
  if not given or given == '' then return redis.call('INCR', root .. ':saves') end
  return math.max(tonumber(given), (tonumber(held) or 0) + 1)
end

local function dead_count()
  return redis.call('ZCOUNT', exp_key, '-inf', ms(now))
end

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
end

-- Up to `want` records of `index` from position `first` on (most recently saved first),
-- reading `chunk` entries, then as many as are still wanted, and at most `budget` in all.
-- Passed over: entries whose record is not held (or is dead, when `check_death`) and, in a
-- user's index (`user` not ''), entries naming another user's record, which are added to
-- `foreign`. -> records, true when the index ended before `want` were found
local function walk(index, user, first, want, budget, chunk, check_death, foreign)
  local records, read = {}, 0
  while read < budget do
    local count = math.min(chunk, budget - read)
    local numbers = redis.call('ZREVRANGE', index, first + read, first + read + count - 1)
    read = read + count
    for _, n in ipairs(numbers) do
      local record = load(n, check_death)
      if record and user ~= '' and record[2] ~= user then
        foreign[#foreign + 1] = n
      elseif record then
        records[#records + 1] = record
        if #records == want then return records, false end
      end
    end
    if #numbers < count then return records, true end
    chunk = math.max(want - #records, 16)
  end
  return records, false
end

-- Entries naming another user's record leave that user's index, on the primary only
-- (prune batch > 0); replicas just pass over them.
local function heal(user, foreign, batch)
  if batch > 0 and #foreign > 0 then redis.call('ZREM', user_key(user), unpack(foreign)) end
end
"""

# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       idempotency key hash ('' = none), request digests (space-separated, the first is
#       stored), idempotency window (ms), save number ('' or absent = this store's counter)
# -> {CREATED, now, record} | {REPLAYED, then, record} | {IDEMPOTENCY_CONFLICT}
#    | {ALREADY_EXPIRED} (CreateReply); error NUMBER_IN_USE
_CREATE = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
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
local save_number = next_save(ARGV[12], nil)
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
return {CreateReply.CREATED, now, record}
"""

# ARGV: root, n, user, blob, preview, expires_at (s), retention (ms), prune batch,
#       expected versions ('*' = any, else space-separated; none listed never matches),
#       save number ('' or absent = this store's counter)
# -> {REFRESHED, now, record} | {NOT_FOUND} | {PRECONDITION_FAILED, version}
#    | {ALREADY_EXPIRED} (RefreshReply)
_REFRESH = """
local n, user, expires = ARGV[2], ARGV[3], tonumber(ARGV[6])
count_seal(ARGV[4])  -- sealed for this call, whatever the outcome
local held = redis.call('HMGET', rec_key(n), 'u', 'g', 'o')
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
local save_number = next_save(ARGV[10], held[3])
save_fields(n, user, ARGV[4], ARGV[5], expires, save_number, death)
prune(tonumber(ARGV[8]))
if redis.call('EXISTS', reclaim_key) == 1 then reclaim(tonumber(ARGV[8])) end
return {RefreshReply.REFRESHED, now, load(n, false)}
"""

# ARGV: root, n, reveal ('1' counts a reveal; '0' writes nothing) -> {now, record, sealed token} | {now}
_GET = """
local n = ARGV[2]
local record = load(n, false)
if not record then return {now} end
if ARGV[3] == '1' then count_reveal(n, record) end
return {now, record, redis.call('HGET', rec_key(n), 't')}
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
prune(batch)
local index = all_key
if user ~= '' then index = user_key(user) end
local foreign = {}
-- The budget passes over every dead entry while at most DEAD_WINDOW wait.
local records, ended = walk(index, user, 0, 1, DEAD_WINDOW + WALK_BUDGET, 16, dead_count() > 0, foreign)
heal(user, foreign, batch)
local record = records[1]
if not record then
  if ended then return {ReadReply.ANSWERED, now, foreign} end
  return {ReadReply.CATCHING_UP, now, foreign}
end
local n = record[1]
if ARGV[4] == '0' then return {ReadReply.ANSWERED, now, foreign, record} end
if ARGV[4] == '1' then count_reveal(n, record) end
return {ReadReply.ANSWERED, now, foreign, record, redis.call('HGET', rec_key(n), 't')}
"""

# ARGV: root, user ('' = all), offset, limit, prune batch
# -> {ANSWERED, now, total, foreign, record...} | {CATCHING_UP, now, 0, foreign} (ReadReply)
#    foreign: numbers of entries naming another user's record (passed over)
# With prune batch 0 it writes nothing (so it runs on replicas).
_PAGE = """
local batch, user, offset, limit = tonumber(ARGV[5]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
prune(batch)
local index = all_key
if user ~= '' then index = user_key(user) end
local size, dead = redis.call('ZCARD', index), dead_count()
local foreign, records, ended = {}, {}, false
local total, skip, want = 0, 0, limit
if dead <= DEAD_WINDOW then
  -- Every dead entry is known: their ranks map the page to exact positions.
  local ranks = {}
  if dead > 0 then ranks = dead_ranks(index, user) end
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
                        foreign)
  total = total - #foreign
elseif user == '' then
  -- A burst of expiries outran pruning: the total is still exact; the page is found by
  -- walking from the top, within the budget.
  total = size - dead
  if offset >= total then return {ReadReply.ANSWERED, now, total, foreign} end
  skip, want = offset, offset + limit
  if want <= WALK_BUDGET or size <= WALK_BUDGET then
    records, ended = walk(index, user, 0, want, WALK_BUDGET, want, true, foreign)
  end
elseif size <= WALK_BUDGET then
  -- A user's total is then known only by reading every entry of their index.
  skip, want = offset, size + 1
  records, ended = walk(index, user, 0, want, want, want, true, foreign)
  total = #records
end
heal(user, foreign, batch)
if #records < want and not ended then return {ReadReply.CATCHING_UP, now, 0, foreign} end
local reply = {ReadReply.ANSWERED, now, total, foreign}
for i = skip + 1, math.min(#records, skip + limit) do reply[#reply + 1] = records[i] end
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

# ARGV: root, user -> {number of live records deleted, foreign}
#    foreign: numbers of entries naming another user's record (that record is left alone)
_CLEAR_USER = """
local user = ARGV[2]
local live, foreign = 0, {}
for _, n in ipairs(redis.call('ZRANGE', user_key(user), 0, -1)) do
  local owner = redis.call('HGET', rec_key(n), 'u')
  if owner and owner ~= user then
    foreign[#foreign + 1] = n
  else
    local member = n .. ':' .. user
    local death = redis.call('ZSCORE', exp_key, member)
    if death and tonumber(death) > now then live = live + 1 end
    redis.call('UNLINK', rec_key(n))
    redis.call('ZREM', all_key, n)
    redis.call('ZREM', exp_key, member)
  end
end
redis.call('UNLINK', user_key(user))
return {live, foreign}
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
count_seal(ARGV[4])
local held = redis.call('HMGET', rec_key(n), 't', 'g')
if held[1] ~= ARGV[3] or held[2] ~= gen then return 0 end
redis.call('HSET', rec_key(n), 't', ARGV[4])
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
    if not redis.call('ZSCORE', all_key, n) or not redis.call('ZSCORE', user_key(user), n)
        or not redis.call('ZSCORE', exp_key, n .. ':' .. user) then
      unindexed = unindexed + 1
      if repair then index_add(n, user, tonumber(held[3] or '0'), death) end
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
}

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
    return PRELUDE + SCRIPTS[name]


# Scripts that change records: with SESSIONSVC_MIN_REPLICAS_ACK they are followed by WAIT.
WRITES = frozenset({"create", "refresh", "delete", "clear_all", "clear_user", "reseal"})
