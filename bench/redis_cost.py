"""Redis's own cost of the store: time per script call and bytes per record, read from
Redis itself (INFO commandstats, used_memory, MEMORY USAGE), never from a wall clock.

    python bench/redis_cost.py                          # 100,000 records, 40-character tokens
    python bench/redis_cost.py --records 1000000        # what `--scale` grows to
    python bench/redis_cost.py --token-chars 800 --against main   # this tree beside another ref

One private redis-server on a free loopback port (never the machine's shared one). Each
side (this tree, and with ``--against REF`` that ref's ``sessionsvc`` taken out of git) is
a store under its own key prefix in that server, bulk-loaded as the service loads records
(its vault: tokens sealed, the create script pipelined) over ``--users`` users. Then, in
``--rounds`` alternating rounds (each operation on side A, then on side B, then the next), every operation the service
runs is called ``--calls`` times, one call at a time, after ``CONFIG RESETSTAT``:
Redis's ``usec_per_call`` of EVALSHA is the script's time, and the commands the script ran
(counted in commandstats as well) say where it went. The median of the rounds is reported.
On this tree, each of the main scripts is followed by its flat twin (``FLAT_TWINS``): the same
commands in one straight run of ``redis.call``s, so that script - twin is the script's own
Lua and twin - ``return 1`` the least any script doing that work costs here.

Memory: ``used_memory`` before and after each side's load, less the event stream's growth
(it is bounded by ``SESSIONSVC_EVENTS_MAXLEN``, not per record), per record; and
``MEMORY USAGE`` of every structure of the store (records sampled), per record. What is
"beyond the sealed token" subtracts the sealed token's length.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: what is called (see `probe`)
OPERATIONS = (
    "EVALSHA of `return 1`",  # the floor of any script call: how loaded the machine is
    "get", "get (no reveal)", "current", "validity", "current (user)", "validity (user)",
    "page 1", "page 500 (limit 2)", "page (user)", "create", "refresh", "delete",
)


# Each script's flat twin: the same Redis commands its usual path runs (the path every
# call of the probe takes), in one straight run of `redis.call`s with the keys and values
# worked out beforehand, and a reply of the same shape; none of the script's own Lua (no
# pieces, no checks, no branches). script - twin is what the script's own logic costs;
# twin - `return 1` is its commands with the Lua bridge around each: the least any script
# doing that work can cost. KEYS[1] = {P}:gen (the twin GETs it as the scripts do),
# ARGV[1] = {P}, as for the scripts.
TWIN_PRELUDE = """
local root = ARGV[1]
local gen = redis.call('GET', KEYS[1]) or '0'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_ms = string.format('%d', now)
"""
# A save's TTL and four index entries, as create's and refresh's twins write them.
TWIN_INDEX = """redis.call('PEXPIREAT', key, ARGV[6])
redis.call('ZADD', root .. ':all:' .. gen, save, n)
redis.call('ZADD', root .. ':u:' .. gen .. ':' .. user, save, n)
redis.call('ZADD', root .. ':exp:' .. gen, ARGV[6], member)
redis.call('ZADD', root .. ':due:' .. gen, ARGV[5] * 1000, member)"""
RECORD_FIELDS = "'u', 'p', 'e', 's', 'c', 'o', 'rc', 'rl', 'g'"
TOKEN_FIELDS = "'k', " + ", ".join(["'t'"] + [f"'t{i}'" for i in range(1, 16)])
FLAT_TWINS = {
    # ARGV: root, n
    "get": TWIN_PRELUDE + f"""
local key = root .. ':r:' .. ARGV[2]
local h = redis.call('HMGET', key, {RECORD_FIELDS}, {TOKEN_FIELDS})
redis.call('HSET', key, 'rc', 1, 'rl', math.floor(now / 1000))
return {{now, {{ARGV[2], h[1], h[2], h[3], h[4], h[5], h[6], 1, math.floor(now / 1000)}},
        table.concat(h, '', 11, 10 + tonumber(h[10]))}}
""",
    # ARGV: root
    "validity": TWIN_PRELUDE + f"""
local top = redis.call('ZREVRANGE', root .. ':all:' .. gen, 0, 0)
local h = redis.call('HMGET', root .. ':r:' .. top[1], {RECORD_FIELDS})
return {{1, now, {{}}, {{top[1], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]}}}}
""",
    # ARGV: root
    "current": TWIN_PRELUDE + f"""
local top = redis.call('ZREVRANGE', root .. ':all:' .. gen, 0, 0)
local key = root .. ':r:' .. top[1]
local h = redis.call('HMGET', key, {RECORD_FIELDS}, {TOKEN_FIELDS})
redis.call('HSET', key, 'rc', 1, 'rl', math.floor(now / 1000))
return {{1, now, {{}}, {{top[1], h[1], h[2], h[3], h[4], h[5], h[6], 1, math.floor(now / 1000)}},
        table.concat(h, '', 11, 10 + tonumber(h[10]))}}
""",
    # ARGV: root, limit
    "page 1": TWIN_PRELUDE + """
local all_key = root .. ':all:' .. gen
local dead = redis.call('ZCOUNT', root .. ':exp:' .. gen, '-inf', now_ms)
local total = redis.call('ZCARD', all_key) - dead
local reply = {1, now, total, {}}
for _, n in ipairs(redis.call('ZREVRANGE', all_key, 0, tonumber(ARGV[2]) - 1)) do
  local h = redis.call('HMGET', root .. ':r:' .. n, 'u', 'p', 'e', 's', 'o', 'g')
  reply[#reply + 1] = {n, h[1], h[2], h[3], h[4], h[5]}
end
return reply
""",
    # ARGV: root, n, user, preview, expires (s), death (ms), events maxlen, prune batch,
    #       due batch, key id, then the sealed token's fields: 't', chunk, 't1', chunk, ...
    "create": TWIN_PRELUDE + """
local n, user, member = ARGV[2], ARGV[3], ARGV[2] .. ':' .. ARGV[3]
local key = root .. ':r:' .. n
redis.call('HINCRBY', root .. ':seals', ARGV[10], 1)
redis.call('EXISTS', key)
redis.call('ZRANGEBYSCORE', root .. ':due:' .. gen, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, ARGV[9])
redis.call('ZRANGEBYSCORE', root .. ':exp:' .. gen, '-inf', now_ms, 'LIMIT', 0, ARGV[8])
local save = redis.call('INCR', root .. ':saves')
local saved = math.floor(now / 1000)
redis.call('HSET', key, 'u', user, 'p', ARGV[4], 'e', ARGV[5], 's', saved, 'c', saved, 'o', save, 'g', gen,
           'k', (#ARGV - 10) / 2, unpack(ARGV, 11))
""" + TWIN_INDEX + """
redis.call('XADD', root .. ':events', 'MAXLEN', '~', ARGV[7], '*', 'type', 'created', 'n', n, 'u', user,
           'e', ARGV[5])
redis.call('EXISTS', root .. ':reclaim')
return {1, now, {n, user, ARGV[4], ARGV[5], saved, saved, save, false, false}}
""",
    # ARGV: as create's
    "refresh": TWIN_PRELUDE + """
local n, user, member = ARGV[2], ARGV[3], ARGV[2] .. ':' .. ARGV[3]
local key = root .. ':r:' .. n
redis.call('HINCRBY', root .. ':seals', ARGV[10], 1)
local held = redis.call('HMGET', key, 'u', 'g', 'o', 'c', 'rc', 'rl', 'k')
redis.call('ZSCORE', root .. ':exp:' .. gen, member)
redis.call('ZRANGEBYSCORE', root .. ':due:' .. gen, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, ARGV[9])
local save = redis.call('INCR', root .. ':saves')
local saved = math.floor(now / 1000)
redis.call('HSET', key, 'u', user, 'p', ARGV[4], 'e', ARGV[5], 's', saved, 'o', save, 'g', gen,
           'k', (#ARGV - 10) / 2, unpack(ARGV, 11))
""" + TWIN_INDEX + """
redis.call('XADD', root .. ':events', 'MAXLEN', '~', ARGV[7], '*', 'type', 'refreshed', 'n', n, 'u', user,
           'e', ARGV[5])
redis.call('ZRANGEBYSCORE', root .. ':exp:' .. gen, '-inf', now_ms, 'LIMIT', 0, ARGV[8])
redis.call('EXISTS', root .. ':reclaim')
return {1, now, {n, user, ARGV[4], ARGV[5], saved, held[4], save, held[5], held[6]}}
""",
    # ARGV: root, n, events maxlen, due batch
    "delete": TWIN_PRELUDE + """
local n = ARGV[2]
local key = root .. ':r:' .. n
local held = redis.call('HMGET', key, 'u', 'g', 'e')
local member = n .. ':' .. held[1]
redis.call('ZRANGEBYSCORE', root .. ':due:' .. gen, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, ARGV[4])
redis.call('UNLINK', key)
redis.call('ZREM', root .. ':all:' .. gen, n)
redis.call('ZREM', root .. ':u:' .. gen .. ':' .. held[1], n)
redis.call('ZREM', root .. ':exp:' .. gen, member)
redis.call('ZREM', root .. ':due:' .. gen, member)
redis.call('XADD', root .. ':events', 'MAXLEN', '~', ARGV[3], '*', 'type', 'deleted', 'n', n, 'u', held[1],
           'e', held[3])
return 1
""",
}
TWIN = " (flat twin)"  # a twin's operation name: the script's, and this


def bench_token(tag: str, chars: int) -> str:
    """A JWT-shaped token of `chars` characters, unique per tag (as bench/run.py makes them)."""
    head = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.{tag}."
    token = head + "x" * max(1, chars - len(head))
    return token if len(token) <= chars else tag[-chars:].rjust(chars, "x")


# --- the worker: one side, in its own process, importing its own tree --------------------------


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.tree)
    import redis

    from sessionsvc import create_app
    from sessionsvc.config import Config
    from sessionsvc.store import format_id
    from sessionsvc.store.operations import PRUNE_BATCH
    from sessionsvc.store.scripts import DUE_BATCH, TOKEN_CHUNK

    config = Config(redis_url=args.url, encryption_keys=(args.key,), key_prefix=args.prefix,
                    retention_seconds=86400, expiry_sweep=False)
    vault = create_app(config).extensions["sessionsvc"]
    store = vault.store
    client = redis.Redis.from_url(args.url)
    root = "{" + args.prefix + "}"
    expires = int(time.time()) + 7 * 86400

    def user_of(number: int) -> str:  # seeded in order: record n (from 1) is entry n - 1
        return f"bench_u{(number - 1) % args.users}"

    if args.worker == "seed":
        events_before = int(client.memory_usage(root + ":events", samples=0) or 0)
        before = client.info("memory")["used_memory"]
        done = 0
        while done < args.records:
            size = min(10_000, args.records - done)
            numbers = vault.save_many([(user_of(done + i + 1), bench_token(f"m{done + i}", args.token_chars), expires)
                                      for i in range(size)])
            assert numbers[0] == done + 1, "the store must be fresh: records are numbered from 1"
            done += size
        after = client.info("memory")["used_memory"]
        events = int(client.memory_usage(root + ":events", samples=0) or 0) - events_before
        sealed = vault.cipher.seal(bench_token("m0", args.token_chars), format_id(1), user_of(1))
        return {"used_memory_delta": after - before, "events_growth": events, "sealed_bytes": len(sealed),
                "structures": structures(client, root, args.records)}

    # Serving: one line per measurement asked for on stdin, "<operation>\t<round>", and one
    # JSON line back. The round seeds which records and users are read.
    held = range(1, args.records + 1)
    users: list[str] = []
    numbers: list[int] = []
    twin_numbers: list[int] = []
    created: list[int] = []
    token = ""

    def new_round(round_number: int) -> None:
        nonlocal token
        rng = random.Random(round_number)
        users[:] = [user_of(n) for n in rng.sample(held, min(args.calls, len(held)))]
        numbers[:] = [rng.choice(held) for _ in range(args.calls)]
        twin_numbers[:] = [rng.choice(held) for _ in range(args.calls)]  # records the scripts' calls did not touch
        token = bench_token(f"r{round_number}", args.token_chars)

    def create(_: int) -> None:
        created.append(vault.save(users[_ % len(users)], token, expires).number)

    def refresh(i: int) -> None:
        n = numbers[i]
        store.refresh(n, user_of(n), vault.cipher.seal(token, format_id(n), user_of(n)), "eyJhbGci...xxxx", expires)

    floor = client.register_script("return 1")
    twin = {name: client.register_script(source) for name, source in FLAT_TWINS.items()}
    for source in FLAT_TWINS.values():  # loaded now: no first call answered NOSCRIPT in the counts
        client.script_load(source)
    twin_created: list[int] = []
    gen_key, preview, death = root + ":gen", "eyJhbGci...xxxx", expires * 1000 + config.retention_seconds * 1000

    def twin_write(name: str, number: int, user: str) -> None:
        sealed = vault.cipher.seal(token, format_id(number), user)
        fields = [part for i in range(0, len(sealed), TOKEN_CHUNK)
                  for part in ("t" + str(i // TOKEN_CHUNK or ""), sealed[i:i + TOKEN_CHUNK])]
        twin[name](keys=[gen_key], args=[root, number, user, preview, expires, death, store.events_maxlen,
                                         PRUNE_BATCH, DUE_BATCH, sealed.split(b":")[0], *fields])

    def twin_create(i: int) -> None:
        twin_created.append(store.reserve_number())
        twin_write("create", twin_created[-1], users[i % len(users)])

    calls = {
        "EVALSHA of `return 1`": lambda i: floor(keys=[root + ":gen"], args=[]),
        "get": lambda i: store.get(numbers[i], reveal=True),
        "get (no reveal)": lambda i: store.get(numbers[i]),
        "current": lambda i: store.current(None, reveal=True),
        "validity": lambda i: store.current(None),
        "current (user)": lambda i: store.current(users[i % len(users)], reveal=True),
        "validity (user)": lambda i: store.current(users[i % len(users)]),
        "page 1": lambda i: store.page(0, 20),
        "page 500 (limit 2)": lambda i: store.page(998, 2),
        "page (user)": lambda i: store.page(0, 20, users[i % len(users)]),
        "create": create,
        "refresh": refresh,
        "delete": lambda i: store.delete(created[i]),
        "get" + TWIN: lambda i: twin["get"](keys=[gen_key], args=[root, twin_numbers[i]]),
        "validity" + TWIN: lambda i: twin["validity"](keys=[gen_key], args=[root]),
        "current" + TWIN: lambda i: twin["current"](keys=[gen_key], args=[root]),
        "page 1" + TWIN: lambda i: twin["page 1"](keys=[gen_key], args=[root, 20]),
        "create" + TWIN: twin_create,
        "refresh" + TWIN: lambda i: twin_write("refresh", twin_numbers[i], user_of(twin_numbers[i])),
        "delete" + TWIN: lambda i: twin["delete"](keys=[gen_key], args=[root, twin_created[i], store.events_maxlen,
                                                                        DUE_BATCH]),
    }
    store.load_scripts()
    counter = Callgrind(args.callgrind_pid, Path(args.callgrind_dir)) if args.callgrind_pid else None
    print("ready", flush=True)
    current_round = None
    for line in sys.stdin:
        name, round_number = line.rstrip("\n").split("\t")
        if round_number != current_round:
            current_round = round_number
            new_round(int(round_number))
            created.clear()
            twin_created.clear()
        client.config_resetstat()
        if counter:
            counter.zero()
        for i in range(args.calls):
            calls[name](i)
        instructions = counter.read() / args.calls if counter else None
        stats = client.info("commandstats")
        script = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        inner = {key[len("cmdstat_"):]: round(value["usec"] / max(script["calls"], 1), 2)
                 for key, value in stats.items()
                 if key not in ("cmdstat_evalsha", "cmdstat_config", "cmdstat_info") and value["calls"]}
        calls_inside = {key[len("cmdstat_"):]: round(value["calls"] / max(script["calls"], 1), 2)
                        for key, value in stats.items()
                        if key not in ("cmdstat_evalsha", "cmdstat_config", "cmdstat_info") and value["calls"]}
        print(json.dumps({"calls": script["calls"], "usec_per_call": round(script["usec"] / max(script["calls"], 1), 2),
                          "inner_usec_per_call": inner, "inner_calls_per_call": calls_inside,
                          "instructions_per_call": instructions}), flush=True)
    client.close()
    return {}


def structures(client, root: str, records: int) -> dict[str, float]:
    """MEMORY USAGE of every key of the store, per record, by kind of key (record hashes
    sampled: 1,000 of them, scaled to the count)."""
    totals: dict[str, float] = collections.Counter()
    record_keys = []
    for key in client.scan_iter(match=root + ":*", count=10_000):
        name = key.decode()[len(root) + 1:]
        kind = name.split(":")[0]
        if kind == "r":
            record_keys.append(key)
            continue
        if kind in ("u", "all", "exp", "due", "idx"):  # generation-numbered indexes
            kind = {"u": "user indexes"}.get(kind, kind)
        totals[kind] += int(client.memory_usage(key, samples=0) or 0)
    sample = random.Random(1).sample(record_keys, min(1000, len(record_keys)))
    totals["records (hashes)"] = statistics.fmean(int(client.memory_usage(key, samples=0) or 0)
                                                  for key in sample) * len(record_keys)
    encodings = collections.Counter(client.object("encoding", key).decode() for key in sample[:100])
    return {"per_record": {kind: round(value / records, 1) for kind, value in sorted(totals.items())},
            "record_encoding": dict(encodings)}


# --- the parent: the server, the sides, the rounds ----------------------------------------------


CALLGRIND_OUT = "callgrind.out"


class Callgrind:
    """Instructions a redis-server under callgrind ran inside `evalShaCommand` (the script
    calls, their commands included) between `zero` and `read`: a count that does not move
    with the machine's load, as a µs figure does (valgrind's CPU model: no cache misses, so
    it counts work, not the cost of 1M records' worth of memory)."""

    def __init__(self, pid: int, workdir: Path):
        self.pid, self.workdir = str(pid), workdir

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, self.pid], check=True, capture_output=True, timeout=120)

    def zero(self) -> None:
        self._control("--zero")

    def read(self) -> int:
        before = set(self.workdir.glob(CALLGRIND_OUT + ".*"))
        self._control("--dump")
        dump = max(set(self.workdir.glob(CALLGRIND_OUT + ".*")) - before, key=lambda path: path.stat().st_mtime)
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dump}")


def private_redis(workdir: Path, options: tuple[str, ...] = (), callgrind: bool = False):
    """A redis-server of our own (tests.redis_server's) on a free loopback port, no
    persistence. `callgrind`: run under valgrind's callgrind, counting only inside
    `evalShaCommand` (see `Callgrind`); its process is then valgrind's."""
    from tests.redis_server import RedisServer

    class UnderCallgrind(RedisServer):
        def command(self) -> list[str]:
            return ["valgrind", "--tool=callgrind", "--toggle-collect=evalShaCommand",
                    f"--callgrind-out-file={workdir / CALLGRIND_OUT}", *super().command()]

    return (UnderCallgrind if callgrind else RedisServer)(workdir, *options)


def worker_command(tree: str, url: str, prefix: str, key: str, action: str, options: argparse.Namespace) -> list:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", action, "--tree", tree, "--url", url,
            "--prefix", prefix, "--key", key, "--records", str(options.records), "--users", str(options.users),
            "--token-chars", str(options.token_chars), "--calls", str(options.calls),
            "--callgrind-dir", str(options.callgrind_dir), "--callgrind-pid", str(options.callgrind_pid or 0)]


WORKER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("SESSIONSVC_")}


def run_worker(tree: str, url: str, prefix: str, key: str, action: str, options: argparse.Namespace) -> dict:
    command = worker_command(tree, url, prefix, key, action, options)
    finished = subprocess.run(command, capture_output=True, text=True, env=WORKER_ENV, cwd=tree)
    if finished.returncode != 0:
        raise SystemExit(f"{prefix} {action} failed:\n{finished.stderr[-4000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--token-chars", type=int, default=40)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", help="a git ref whose sessionsvc is measured beside this tree's")
    parser.add_argument("--memory-only", action="store_true", help="load and measure memory, no script timing")
    parser.add_argument("--redis-option", action="append", default=[],
                        help="a redis-server setting, e.g. 'hash-max-listpack-value 1024'")
    parser.add_argument("--instructions", action="store_true",
                        help="run redis-server under callgrind and count instructions per script call as well "
                             "(repeatable on a busy machine; slow: use --records in the thousands)")
    parser.add_argument("--out", help="write the JSON report here too")
    # the worker's own arguments
    parser.add_argument("--worker", choices=("seed", "probe"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-dir", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args)
        if result:
            print(json.dumps(result))
        return 0

    sys.path.insert(0, str(ROOT))
    from sessionsvc.crypto import generate_key

    with tempfile.TemporaryDirectory(prefix="sessionsvc-redis-cost-") as directory:
        sides = {"this tree": str(ROOT)}
        if args.against:
            tree = Path(directory) / "against"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", args.against, "sessionsvc"], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            sides = {args.against: str(tree), **sides}
        options = tuple(part for option in args.redis_option for part in ("--" + option.split()[0],
                                                                           *option.split()[1:]))
        key = generate_key("bench")
        report: dict = {"records": args.records, "users": args.users, "token_chars": args.token_chars,
                        "calls": args.calls, "rounds": args.rounds, "redis_options": args.redis_option, "sides": {}}
        args.callgrind_dir = directory
        with private_redis(Path(directory), options, callgrind=args.instructions) as server:
            url = server.url
            args.callgrind_pid = server.process.pid if args.instructions else None
            import redis
            report["redis_version"] = redis.Redis.from_url(url).info("server")["redis_version"]
            prefixes = {side: f"cost{index}" for index, side in enumerate(sides)}
            for side, tree in sides.items():
                started = time.monotonic()
                seeded = run_worker(tree, url, prefixes[side], key, "seed", args)
                per_record = (seeded["used_memory_delta"] - seeded["events_growth"]) / args.records
                seeded["bytes_per_record"] = round(per_record, 1)
                seeded["beyond_sealed_token"] = round(per_record - seeded["sealed_bytes"], 1)
                report["sides"][side] = {"memory": seeded, "rounds": []}
                print(f"{side}: loaded {args.records:,} in {time.monotonic() - started:.0f} s: "
                      f"{per_record:.0f} B per record (sealed token {seeded['sealed_bytes']} B): "
                      f"{json.dumps(seeded['structures'])}", flush=True)
            # Every operation on each side in turn, round after round: the same operation's
            # figures for the two sides are taken seconds apart (a shared machine's load moves
            # over minutes).
            servers = {side: subprocess.Popen(worker_command(tree, url, prefixes[side], key, "probe", args),
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                              env=WORKER_ENV, cwd=tree)
                       for side, tree in sides.items()} if not args.memory_only else {}
            for process in servers.values():
                assert process.stdout.readline().strip() == "ready"
            for round_number in range(args.rounds if servers else 0):
                for side in sides:
                    report["sides"][side]["rounds"].append({})
                for name in OPERATIONS:
                    asked = [(side, name) for side in servers]
                    if name in FLAT_TWINS:
                        asked.append(("this tree", name + TWIN))
                    for side, operation in asked:
                        process = servers[side]
                        process.stdin.write(f"{operation}\t{round_number}\n")
                        process.stdin.flush()
                        report["sides"][side]["rounds"][-1][operation] = json.loads(process.stdout.readline())
                print(f"round {round_number + 1} done", flush=True)
            for process in servers.values():
                process.stdin.close()
                process.wait(60)
        for data in report["sides"].values():
            if data["rounds"]:
                data["median_usec_per_call"] = {
                    name: statistics.median(r[name]["usec_per_call"] for r in data["rounds"])
                    for name in data["rounds"][0]
                }
                if args.instructions:
                    data["median_instructions_per_call"] = {
                        name: statistics.median(r[name]["instructions_per_call"] for r in data["rounds"])
                        for name in data["rounds"][0]
                    }
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def print_twins(data: dict) -> None:
    """Each script beside its flat twin (see FLAT_TWINS): what its own Lua costs, and the
    least its commands cost run from Lua."""
    medians = data["median_usec_per_call"]
    floor = medians[OPERATIONS[0]]
    print("\nthis tree, each script beside its flat twin (µs per call, medians; commands: Redis's own time "
          "in the twin, last round)")
    print("| script | script | flat twin | the script's own Lua (script − twin) | twin − `return 1`: "
          "its commands run from Lua | of which the commands themselves |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in FLAT_TWINS:
        script, flat = medians[name], medians[name + TWIN]
        inner = data["rounds"][-1][name + TWIN]["inner_usec_per_call"]
        commands = sum(usec for command, usec in inner.items() if not command.startswith(("config", "script")))
        print(f"| {name} | {script:.1f} | {flat:.1f} | {script - flat:.1f} ({(script - flat) / script:.0%}) "
              f"| {flat - floor:.1f} | {commands:.1f} |")
    counts = data.get("median_instructions_per_call")
    if counts:
        print("\nthe same in Redis's instructions per call (callgrind)")
        print("| script | script | flat twin | the script's own Lua | twin − `return 1` |")
        print("|---|---:|---:|---:|---:|")
        for name in FLAT_TWINS:
            script, flat = counts[name], counts[name + TWIN]
            print(f"| {name} | {script:,.0f} | {flat:,.0f} | {script - flat:,.0f} ({(script - flat) / script:.0%}) "
                  f"| {flat - counts[OPERATIONS[0]]:,.0f} |")


def print_report(report: dict) -> None:
    sides = list(report["sides"])
    print(f"\nredis {report['redis_version']}, {report['records']:,} records of {report['token_chars']}-character "
          f"tokens over {report['users']:,} users; {report['calls']} calls per script, median of "
          f"{report['rounds']} rounds")
    if all("median_usec_per_call" in report["sides"][side] for side in sides):
        print("| script | " + " | ".join(f"{side} µs/call" for side in sides) + " |")
        for name in OPERATIONS:
            cells = " | ".join(f"{report['sides'][side]['median_usec_per_call'][name]:.1f}" for side in sides)
            print(f"| {name} | {cells} |")
        if all("median_instructions_per_call" in report["sides"][side] for side in sides):
            print("\n| script | " + " | ".join(f"{side} instructions/call" for side in sides)
                  + (" | change |" if len(sides) == 2 else " |"))
            for name in OPERATIONS:
                counts = [report["sides"][side]["median_instructions_per_call"][name] for side in sides]
                change = f" | {counts[-1] / counts[0] - 1:+.1%}" if len(counts) == 2 else ""
                print(f"| {name} | " + " | ".join(f"{count:,.0f}" for count in counts) + change + " |")
        print_twins(report["sides"]["this tree"])
        for side in sides:
            print(f"\n{side}: commands inside each script (last round, µs per script call)")
            for name, stats in report["sides"][side]["rounds"][-1].items():
                inner = ", ".join(f"{cmd} {usec}" for cmd, usec in
                                  sorted(stats["inner_usec_per_call"].items(), key=lambda item: -item[1]))
                print(f"  {name}: {stats['usec_per_call']} = {inner}")
    print("\n| bytes per record | " + " | ".join(sides) + " |")
    kinds = sorted({kind for side in sides for kind in report["sides"][side]["memory"]["structures"]["per_record"]})
    for kind in kinds:
        cells = " | ".join(str(report["sides"][side]["memory"]["structures"]["per_record"].get(kind, "–"))
                           for side in sides)
        print(f"| {kind} (MEMORY USAGE) | {cells} |")
    for label, field in (("used_memory, less the event stream", "bytes_per_record"),
                         ("sealed token", "sealed_bytes"), ("beyond the sealed token", "beyond_sealed_token")):
        print(f"| {label} | " + " | ".join(str(report["sides"][side]["memory"][field]) for side in sides) + " |")
    for side in sides:
        print(f"{side}: record encodings {report['sides'][side]['memory']['structures']['record_encoding']}")


if __name__ == "__main__":
    raise SystemExit(main())
