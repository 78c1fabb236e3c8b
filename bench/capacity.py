"""Capacity figures for docs/scaling.md, measured on a private redis-server.

    .venv/bin/python -m bench.capacity [--records 20000] [--users 2000]

1. Memory: records per GB with realistic ~800-character tokens (sealed as the service
   seals them), including their three index entries.
2. Redis CPU per operation: each store script sent in pipelined batches, Redis's own CPU
   time (INFO cpu) divided by the operations: operations per second per Redis core.
3. Sharding one store by user over S slots: how evenly users spread, and what a global
   page costs (entries read, scripts run) against a single-slot store.

Starts its own redis-server on a free loopback port and stops it; never touches another.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

import redis

from bench.same_work import PRUNE_BATCH, SameWork
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from sessionsvc.vault import TokenVault
from tests.redis_server import RedisServer

TOKEN_LENGTH = 800
BATCH = 200
PREFIX = "bench"


def jwt_like(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    body = "".join(rng.choice(alphabet) for _ in range(TOKEN_LENGTH - 2))
    return body[:36] + "." + body[36:700] + "." + body[700:]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def fill(vault: TokenVault, client: redis.Redis, records: int, users: int) -> dict[str, float]:
    """`records` records saved as the service saves them (its vault's bulk load: sealed,
    pipelined); Redis's memory and CPU for them."""
    rng = random.Random(7)
    expires = int(time.time()) + 30 * 86400
    before = client.info("memory")["used_memory"]
    cpu_before, started = redis_cpu(client), time.perf_counter()
    for start in range(0, records, BATCH):
        vault.save_many([(f"user{rng.randrange(users):06d}", jwt_like(rng), expires)
                         for _ in range(min(BATCH, records - start))])
    elapsed, cpu = time.perf_counter() - started, redis_cpu(client) - cpu_before
    used = client.info("memory")["used_memory"] - before
    return {"bytes_per_record": used / records, "create_ops_per_core": records / cpu,
            "create_wall_ops": records / elapsed}


def per_core(work: SameWork, name: str, argument_sets: list[tuple], rounds: int, batch: int = BATCH) -> float:
    """Operations per second of Redis CPU for one script, pipelined `batch` at a time."""
    script, client = work.scripts[name], work.client
    cpu_before = redis_cpu(client)
    done = 0
    for round_number in range(rounds):
        with client.pipeline(transaction=False) as pipe:
            for index in range(batch):
                args = argument_sets[(round_number * batch + index) % len(argument_sets)]
                script(keys=work.keys, args=[work.root, *args], client=pipe)
            pipe.execute()
        done += batch
    return done / (redis_cpu(client) - cpu_before)


def sharded_global_page(client: redis.Redis, records: int, users: int, shards: int) -> dict:
    """Fill `shards` stores (one slot each) with records by user hash and measure a global
    page 1 (limit 20) read from all of them and merged, per Redis CPU-second. (A page
    reads no tokens, so they are stored unsealed.)"""
    stores = [SameWork(client, f"s{shards}-{index}") for index in range(shards)]
    rng = random.Random(5)
    expires = int(time.time()) + 30 * 86400
    by_shard: list[list[tuple[str, str, int]]] = [[] for _ in stores]
    for _ in range(records):
        user = f"user{rng.randrange(users):06d}"
        by_shard[shard_of(user, shards)].append((user, jwt_like(rng), expires))
    for store, entries in zip(stores, by_shard, strict=True):
        store.load(entries, BATCH)
    rounds = 300
    cpu_before = redis_cpu(client)
    for _ in range(rounds):
        with client.pipeline(transaction=False) as pipe:
            for store in stores:
                store.scripts["page"](keys=store.keys, args=[store.root, "", 0, 20, PRUNE_BATCH], client=pipe)
            replies = pipe.execute()
        merged = sorted((fields for reply in replies for fields in reply[4:]), key=lambda f: -int(f[6]))[:20]
        assert len(merged) == 20
    return {"shards": shards, "global_pages_per_core": rounds / (redis_cpu(client) - cpu_before)}


def shard_of(user: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha1(user.encode()).digest()[:4], "big") % shards


def simulate_sharding(users: int, records_per_user: float) -> list[dict[str, float]]:
    """Users spread over S shard slots on M masters; a global page at offset o of size l
    reads (o + l) entries from each shard and merges them."""
    rng = random.Random(11)
    names = [f"user{index:07d}" for index in range(users)]
    weights = [rng.paretovariate(1.5) for _ in names]  # a few heavy users, many light ones
    scale = records_per_user * users / sum(weights)
    rows = []
    for shards, masters in ((16, 3), (64, 3), (256, 6), (1024, 12)):
        per_shard = [0.0] * shards
        for name, weight in zip(names, weights, strict=True):
            per_shard[shard_of(name, shards)] += weight * scale
        per_master = [sum(per_shard[s] for s in range(shards) if s % masters == m) for m in range(masters)]
        rows.append({
            "shards": shards, "masters": masters,
            "shard_max_over_mean": max(per_shard) / statistics.mean(per_shard),
            "master_max_over_mean": max(per_master) / statistics.mean(per_master),
            "page1_entries_read": shards * 20, "page50_entries_read": shards * 1000,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--users", type=int, default=2000)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sessionsvc-capacity-") as directory, \
            RedisServer(Path(directory)) as redis_server:
        url = redis_server.url
        client = redis.Redis.from_url(url)
        config = Config(redis_url=url, encryption_keys=(generate_key("bench"),), key_prefix=PREFIX)
        filled = fill(create_app(config).extensions["sessionsvc"], client, options.records, options.users)
        work = SameWork(client, PREFIX)
        rng = random.Random(3)
        numbers = [(rng.randrange(1, options.records + 1),) for _ in range(1000)]
        users = [f"user{rng.randrange(options.users):06d}" for _ in range(1000)]
        figures = {
            "get (reveal)": per_core(work, "get", [(n, "1") for (n,) in numbers], 25),
            "current (all)": per_core(work, "current", [("", PRUNE_BATCH, "1")], 25),
            "current (one user)": per_core(work, "current", [(u, PRUNE_BATCH, "1") for u in users], 25),
            "validity (one user)": per_core(work, "current", [(u, PRUNE_BATCH, "0") for u in users], 25),
            "page 1, limit 20": per_core(work, "page", [("", 0, 20, PRUNE_BATCH)], 25),
            "page 50, limit 20": per_core(work, "page", [("", 980, 20, PRUNE_BATCH)], 25),
            "page (one user)": per_core(work, "page", [(u, 0, 20, PRUNE_BATCH) for u in users], 25),
            "validity (one user), one round-trip each": per_core(
                work, "current", [(u, PRUNE_BATCH, "0") for u in users], 5000, batch=1
            ),
        }
        sharded = [sharded_global_page(client, options.records, options.users, shards) for shards in (16, 64)]
        print(f"redis {client.info('server')['redis_version']}, {options.records} records, "
              f"{options.users} users, tokens of {TOKEN_LENGTH} characters")
        print(f"memory: {filled['bytes_per_record']:.0f} bytes per record "
              f"-> {2**30 / filled['bytes_per_record']:,.0f} records per GiB of used_memory")
        print(f"create: {filled['create_ops_per_core']:,.0f} per Redis CPU-second "
              f"({filled['create_wall_ops']:,.0f}/s wall, client included)")
        for name, value in figures.items():
            print(f"{name}: {value:,.0f} per Redis CPU-second")
        for row in sharded:
            print(f"global page 1 over {row['shards']} user shards (one pipelined round-trip, merged by save "
                  f"number): {row['global_pages_per_core']:,.0f} per Redis CPU-second")
        print("sharding one store by user (simulated, 1,000,000 users, Pareto record counts):")
        for row in simulate_sharding(1_000_000, 2.0):
            print("  S={shards:<5} M={masters:<3} busiest shard {shard_max_over_mean:.2f}x mean, "
                  "busiest master {master_max_over_mean:.2f}x mean, global page 1 reads "
                  "{page1_entries_read:,} entries, page 50 reads {page50_entries_read:,}".format(**row))
        client.close()


if __name__ == "__main__":
    main()
