-- wrk script for bench/run.py: one request kind per run, chosen by BENCH_MODE.
--   get_id | current | validity | list | post | put | mixed | path (GET BENCH_PATH)
-- BENCH_IDS: highest seeded record number (GET/PUT pick one at random, ids 1..BENCH_IDS)
-- BENCH_EXPIRES: RFC 3339 expires_at for POST/PUT bodies (in the future)
-- BENCH_TOKEN_CHARS: length of the tokens sent (JWT-like, unique per request)
-- done() prints one JSON line that run.py reads: counts and latency percentiles in us, and
-- with BENCH_HISTOGRAM=1 every latency seen as [us, count] pairs (run.py merges runs by them).

local mode = os.getenv("BENCH_MODE") or "current"
local max_id = tonumber(os.getenv("BENCH_IDS") or "1000")
local expires = os.getenv("BENCH_EXPIRES") or "2099-01-01T00:00:00Z"
local token_chars = tonumber(os.getenv("BENCH_TOKEN_CHARS") or "800")
local prefix = "/api/v1/session-storage"
local json_headers = { ["Content-Type"] = "application/json" }
local histogram = os.getenv("BENCH_HISTOGRAM") == "1"

local threads = {}
local counter = 0
local filler = ""

function setup(thread)
  table.insert(threads, thread)
  thread:set("tag", "w" .. #threads)
end

function init(args)
  math.randomseed(os.time() + #tag * 7919 + string.byte(tag, -1))
  -- header.payload.<unique part>.<filler>: the unique part keeps every body distinct
  filler = string.rep("x", math.max(1, token_chars - 64))
end

local function token()
  counter = counter + 1
  return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9." .. tag .. "-" .. counter .. "." .. filler
end

local function item_path()
  return string.format("%s/store_%03d", prefix, math.random(1, max_id))
end

local builders = {
  get_id = function() return wrk.format("GET", item_path()) end,
  current = function() return wrk.format("GET", prefix .. "/current") end,
  validity = function() return wrk.format("GET", prefix .. "/validity") end,
  list = function() return wrk.format("GET", prefix .. "?page=1&limit=20") end,
  path = function() return wrk.format("GET", os.getenv("BENCH_PATH")) end,
  post = function()
    local body = '{"user_id":"bench_u' .. math.random(0, 999) .. '","token":"' .. token()
      .. '","expires_at":"' .. expires .. '"}'
    return wrk.format("POST", prefix, json_headers, body)
  end,
  put = function()
    local body = '{"token":"' .. token() .. '","expires_at":"' .. expires .. '"}'
    return wrk.format("PUT", item_path(), json_headers, body)
  end,
}

-- The mixed workload: mostly reads of the current token, some listing and saving.
local mix = {
  { 30, "validity" }, { 25, "current" }, { 15, "get_id" }, { 10, "list" }, { 12, "post" }, { 8, "put" },
}

function request()
  if mode ~= "mixed" then return builders[mode]() end
  local roll = math.random(1, 100)
  for _, entry in ipairs(mix) do
    roll = roll - entry[1]
    if roll <= 0 then return builders[entry[2]]() end
  end
  return builders.validity()
end

function done(summary, latency, requests)
  local e = summary.errors
  local entries = {}
  if histogram then
    for i = 1, #latency do
      local value, count = latency(i)
      entries[#entries + 1] = string.format("[%d,%d]", value, count)
    end
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"histogram":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(entries, ",")))
end
