"""Sharding one store by user (SESSIONSVC_SHARDS): what it costs Redis, measured through the
service's own vault on private redis-servers.

    .venv/bin/python -m bench.sharding [--records 20000] [--users 2000] [--shards 1,4,16,64]
    make bench-shards

1. Whole-store reads as a function of S, on one redis-server: page 1 and the deepest page
   allowed (offset + limit = max_global_depth(S)), and offset + limit = 1000 for comparison,
   current and validity without a user; and,
   for comparison, the same for one user. Redis CPU per call (INFO cpu) and wall time per
   call, client included (each call is one pipelined round-trip, two for a whole-store
   current).
2. Saves: wall time and Redis CPU per POST-equivalent save at each S (S > 1 adds one
   round-trip: the store-wide save counter).
3. Memory per record at each S (used_memory after loading, 800-character tokens).
4. The mixed workload of bench/run.py (30 % validity, 25 % current, 15 % GET /<id>, 10 %
   list, 12 % POST, 8 % PUT), once per user (what a sharded store is for) and once as
   wrk.lua sends it (current, validity and list of the whole store): at each S on the one
   server, and on a 3-master Cluster (`redis-cli --cluster create`) holding one store of
   S = 16, with the Redis CPU of each master, its share, the busiest against the mean, and
   operations per Redis CPU-second.

Starts its own redis-servers on free loopback ports and stops them; never touches another.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from bench.capacity import jwt_like, redis_cpu
from bench.run import MIX
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from sessionsvc.store import format_id, max_global_depth
from sessionsvc.vault import TokenVault
from tests.redis_server import REDIS_CLI, RedisServer, wait_until

KEYS = (generate_key("bench"),)
MIX_KINDS = [kind for kind, weight in MIX for _ in range(weight)]
BATCH = 500


def vault_on(url: str, prefix: str, shards: int, cluster: bool = False) -> TokenVault:
    config = Config(redis_url=url, encryption_keys=KEYS, key_prefix=prefix, shards=shards, redis_cluster=cluster,
                    redis_timeout_seconds=5.0)
    return create_app(config).extensions["sessionsvc"]


def fill(vault: TokenVault, records: int, users: int, seed: int = 7) -> list[int]:
    """`records` records of 800-character tokens for `users` users, bulk-loaded; their numbers."""
    rng = random.Random(seed)
    expires = int(time.time()) + 30 * 86400
    numbers: list[int] = []
    for start in range(0, records, BATCH):
        entries = [(f"user{rng.randrange(users):06d}", jwt_like(rng), expires)
                   for _ in range(min(BATCH, records - start))]
        numbers.extend(vault.save_many(entries))
    return numbers


def measure(clients: list[redis.Redis], calls: int, call: Callable[[int], object]) -> dict[str, float]:
    """Redis CPU (summed over `clients`' servers) and wall time per call."""
    cpu_before = [redis_cpu(client) for client in clients]
    started = time.perf_counter()
    for index in range(calls):
        call(index)
    wall = time.perf_counter() - started
    cpu = sum(redis_cpu(client) - before for client, before in zip(clients, cpu_before, strict=True))
    return {"per_cpu_second": calls / cpu if cpu > 0 else float("inf"), "cpu_us": cpu / calls * 1e6,
            "wall_ms": wall / calls * 1000}


def whole_store_costs(url: str, shard_counts: list[int], records: int, users: int, calls: int) -> list[dict]:
    client = redis.Redis.from_url(url)
    rows = [costs_at(client, url, shards, records, users, calls) for shards in shard_counts]
    client.close()
    return rows


def costs_at(client: redis.Redis, url: str, shards: int, records: int, users: int, calls: int) -> dict:
    """One store of `shards` shards filled, then each operation measured."""
    vault = vault_on(url, f"s{shards}", shards)
    memory_before = client.info("memory")["used_memory"]
    numbers = fill(vault, records, users)
    bytes_per_record = (client.info("memory")["used_memory"] - memory_before) / records
    rng = random.Random(3)
    some_users = [f"user{rng.randrange(users):06d}" for _ in range(500)]
    deepest_page = max_global_depth(shards) // 20
    reads = max(calls // 50, calls // shards)
    expires = int(time.time()) + 86400
    row = {
        "shards": shards,
        "bytes_per_record": bytes_per_record,
        "page 1 (whole store)": measure([client], reads, lambda _: vault.page(1, 20)),
        f"page {deepest_page} (whole store, the deepest allowed)": measure(
            [client], max(1, reads // 10), lambda _: vault.page(deepest_page, 20)),
        "depth 1000, what page 50 of 20 would read": measure(
            [client], max(1, reads // 40),
            lambda _: vault.store.page(980, 20) if shards == 1 else vault.store._every_page(0, 1000)),
        "current (whole store)": measure([client], reads, lambda _: vault.current()),
        "validity (whole store)": measure([client], reads, lambda _: vault.validity()),
        "validity (one user)": measure([client], calls, lambda i: vault.validity(some_users[i % 500])),
        "page 1 (one user)": measure([client], calls, lambda i: vault.page(1, 20, some_users[i % 500])),
        "GET /<id>": measure([client], calls, lambda i: vault.reveal(format_id(numbers[(i * 7919) % records]))),
        "save (POST)": measure([client], calls, lambda i: vault.save(some_users[i % 500], jwt_like(rng), expires)),
        "mixed workload, per user": measure(
            [client], 2 * calls, lambda _: mixed_operation(vault, numbers, users, rng, whole_store=False)),
        "mixed workload, as wrk.lua (whole store)": measure(
            [client], max(calls // 10, 2 * calls // shards),
            lambda _: mixed_operation(vault, numbers, users, rng, whole_store=True)),
    }
    print_row(row)
    return row


def print_row(row: dict) -> None:
    print(f"S={row['shards']}: {row['bytes_per_record']:.0f} bytes per record")
    for name, figures in row.items():
        if isinstance(figures, dict):
            print(f"  {name:<44} {figures['per_cpu_second']:>10,.0f} per Redis CPU-second  "
                  f"{figures['cpu_us']:>8,.1f} us Redis CPU  {figures['wall_ms']:>7.2f} ms wall")


# --- a 3-master cluster ---------------------------------------------------------------------


@contextlib.contextmanager
def cluster(workdir: Path, masters: int) -> Iterator[list[str]]:
    """`masters` private redis-servers made one Cluster with redis-cli (slots split evenly)."""
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(RedisServer(workdir / f"node{index}", "--cluster-enabled", "yes",
                                                 "--cluster-config-file", "nodes.conf", with_bus=True))
                 for index in range(masters)]
        subprocess.run([REDIS_CLI or "redis-cli", "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(node.client().cluster("info")["cluster_state"] == "ok" for node in nodes),
                   timeout=20, what="the cluster to agree on its slots")
        yield [node.url for node in nodes]


def mixed_operation(vault: TokenVault, numbers: list[int], users: int, rng: random.Random,
                    whole_store: bool) -> None:
    """One operation of the mix of bench/run.py through the vault: per user, or as wrk.lua
    sends it (current, validity and list of the whole store)."""
    kind, user = rng.choice(MIX_KINDS), f"user{rng.randrange(users):06d}"
    scope = None if whole_store else user
    expires = int(time.time()) + 86400
    if kind == "validity":
        vault.validity(scope)
    elif kind == "current":
        vault.current(scope)
    elif kind == "get_id":
        vault.reveal(format_id(rng.choice(numbers)))
    elif kind == "list":
        vault.page(1, 20, scope)
    elif kind == "post":
        vault.save(user, jwt_like(rng), expires)
    else:
        vault.refresh(format_id(rng.choice(numbers)), jwt_like(rng), expires)


def cluster_balance(records: int, users: int, operations: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="sessionsvc-shards-") as directory, \
            cluster(Path(directory), 3) as urls:
        masters = [redis.Redis.from_url(url) for url in urls]
        vault = vault_on(urls[0], "sessionsvc", 16, cluster=True)
        numbers = fill(vault, records, users)
        results = {}
        for label, whole_store, count in (("per user", False, operations),
                                          ("whole store (as wrk.lua)", True, operations // 4)):
            before = [redis_cpu(master) for master in masters]
            started, rng = time.perf_counter(), random.Random(13)
            for _ in range(count):
                mixed_operation(vault, numbers, users, rng, whole_store)
            wall = time.perf_counter() - started
            cpu = [redis_cpu(master) - was for master, was in zip(masters, before, strict=True)]
            mean = statistics.mean(cpu)
            results[label] = {"operations": count, "cpu_seconds": cpu, "busiest_over_mean": max(cpu) / mean,
                              "per_cpu_second": count / sum(cpu), "wall_ms": wall / count * 1000}
            shares = ", ".join(f"{seconds / sum(cpu):.0%}" for seconds in cpu)
            print(f"cluster, 3 masters, S=16, mixed workload {label}: {count} operations, Redis CPU per master "
                  f"{', '.join(f'{seconds:.2f}s' for seconds in cpu)} (shares {shares}); busiest/mean "
                  f"{max(cpu) / mean:.2f}; {count / sum(cpu):,.0f} operations per Redis CPU-second (all masters); "
                  f"{wall / count * 1000:.2f} ms wall per operation")
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--shards", default="1,4,16,64")
    parser.add_argument("--operations", type=int, default=8000, help="mixed-workload operations on the cluster")
    parser.add_argument("--calls", type=int, default=2000, help="calls per one-user operation measured")
    parser.add_argument("--skip-cluster", action="store_true")
    options = parser.parse_args()
    shard_counts = [int(value) for value in options.shards.split(",")]
    print(f"{options.records} records of 800-character tokens for {options.users} users per store")
    with tempfile.TemporaryDirectory(prefix="sessionsvc-shards-") as directory, \
            RedisServer(Path(directory)) as redis_server:
        whole_store_costs(redis_server.url, shard_counts, options.records, options.users, options.calls)
    if not options.skip_cluster:
        cluster_balance(options.records, options.users, options.operations)


if __name__ == "__main__":
    main()
