"""Benchmarks: the service against its ceiling, side by side, on a private redis-server.

    python -m bench.run            # `make bench`: the table (service vs both baselines, 6 endpoints
                                   # and the mixed workload at 16 and 256 connections)
    python -m bench.run --sweep    # gunicorn worker classes and counts, mixed workload
    python -m bench.run --scale    # `make bench-scale`: growth 1k -> 100k -> 1M records
    python -m bench.run --memory   # Redis bytes per record and per index structure
    python -m bench.run --burst    # 100k records expiring in the same second

(from the repository root, as every bench/ script: they import `bench`, `sessionsvc` and
`tests.redis_server` from there.)

Everything runs on loopback: a private redis-server on a free port (tests/redis_server.py;
never the machine's shared one), the service under its production gunicorn settings
(`gunicorn.conf.py`), the same-work baseline (`bench/baseline_app.py`) under the same
settings and, in the main table, the naive app (`bench/naive_app.py`: one plain command per
request, no access log; `bench/naive_gunicorn.conf.py`), each with its own key prefix in
that Redis and the same number of seeded records. Load comes from wrk (`bench/wrk.lua`), or
from a small Python loop (`--driver python`, used by the smoke test). Results go to
`bench/results/*.json` and, unless `--no-docs`, into the marked sections of
`docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.same_work import SameWork, preview
from sessionsvc import create_app
from sessionsvc.config import Config
from sessionsvc.crypto import generate_key
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/api/v1/session-storage"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
SERVICE_PREFIX = "sessionsvc"
BASELINE_PREFIX = "bench_baseline"
NAIVE_PREFIX = "bench_naive"
NAIVE_CONFIG = "bench/naive_gunicorn.conf.py"

ENDPOINTS = {  # mode: (label, target ratio of requests/s)
    "get_id": ("GET /<id>", 0.85),
    "current": ("GET /current", 0.85),
    "validity": ("GET /validity", 0.85),
    "list": ("GET list page 1 (limit 20)", 0.75),
    "post": ("POST", 0.75),
    "put": ("PUT /<id>", 0.75),
}
P99_LIMIT = 1.5
# Against the naive app: the same ratio on every endpoint, p99 within 1.5x at the table's
# connections and within 2x on the mixed workload at --heavy-connections (256).
NAIVE_TARGET = 0.8
HEAVY_P99_LIMIT = 2.0
SIDES = ("service", "baseline", "naive")
# The mixed workload (same weights as bench/wrk.lua): percent per request kind.
MIX = (("validity", 30), ("current", 25), ("get_id", 15), ("list", 10), ("post", 12), ("put", 8))
SWEEP = "sync:2:1,sync:4:1,gthread:2:4,gevent:2:1,gevent:3:1,gevent:4:1"  # class:workers:threads


def log(message: str) -> None:
    print(message, flush=True)


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def bench_token(tag: str, chars: int) -> str:
    """A JWT-shaped token of `chars` characters, unique per tag."""
    head = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.{tag}."
    return head + "x" * max(1, chars - len(head))


# --- processes ---------------------------------------------------------------------------


def clean_environment(**settings: str) -> dict[str, str]:
    """The process environment without any SESSIONSVC_*/REDIS_URL/WEB_CONCURRENCY of the
    caller's shell (they would change what is measured), plus `settings`."""
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("SESSIONSVC_", "GUNICORN_")) and name not in ("REDIS_URL", "WEB_CONCURRENCY")
    }
    env.update(settings)
    return env


def _cpu_ticks(pid: int, children_too: bool = False) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks + (int(fields[13]) + int(fields[14]) if children_too else 0)  # + reaped children


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU used so far by the arbiter and its workers, restarted ones included: a
        measure of cost per request that other load on the machine barely moves."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        ticks = _cpu_ticks(self.pid, children_too=True) + sum(_cpu_ticks(int(child)) for child in children)
        return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def gunicorn(app: str, env: dict[str, str], workdir: Path, name: str, extra: tuple[str, ...] = (),
             wrapper: tuple[str, ...] = (), boot_seconds: float = 60,
             config: str = "gunicorn.conf.py") -> Iterator[Server]:
    """`gunicorn -c <config> <app>` on a free port (run by `wrapper`, e.g. valgrind)."""
    port = free_port()
    stderr = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    command = [*wrapper, sys.executable, "-m", "gunicorn", "-c", config, "--bind", f"127.0.0.1:{port}",
               *extra, app]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + boot_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited at start-up:\n{(workdir / f'{name}.log').read_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer /healthz")
            time.sleep(0.1)
        time.sleep(0.5)  # let every worker finish booting
        yield Server(f"http://127.0.0.1:{port}", process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGQUIT)  # quick shutdown of the arbiter and its workers
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        stderr.close()


# --- seeding -------------------------------------------------------------------------------


def seed(
    url: str,
    key: str | None,
    count: int,
    *,
    key_prefix: str = SERVICE_PREFIX,
    users: int = 1000,
    token_chars: int = 800,
    expires_at: int | None = None,
    retention_seconds: int = 86400,
    tag: str = "seed",
    chunk: int = 10_000,
) -> None:
    """Bulk-load `count` records (pipelined). With a key, into the service's store as the
    service saves them: its own vault (`create_app`), tokens sealed; without one, into the
    baseline's as the baseline stores them (`bench/same_work.py`), tokens as they are."""
    expires_at = expires_at or int(time.time()) + 86400
    if key:
        config = Config(redis_url=url, encryption_keys=(key,), key_prefix=key_prefix,
                        retention_seconds=retention_seconds)
        load = create_app(config).extensions["sessionsvc"].save_many
    else:
        load = SameWork(redis.Redis.from_url(url), key_prefix, retention_seconds).load
    done = 0
    while done < count:
        size = min(chunk, count - done)
        load([(f"bench_u{(done + index) % users}", bench_token(f"{tag}-{done + index}", token_chars), expires_at)
              for index in range(size)])
        done += size


def seed_naive(
    url: str,
    count: int,
    *,
    key_prefix: str = NAIVE_PREFIX,
    users: int = 1000,
    token_chars: int = 800,
    expires_at: int | None = None,
    tag: str = "seed",
    chunk: int = 1000,
) -> None:
    """`count` records, numbered from 1, as the naive app (`bench/naive_app.py`) keeps them:
    a hash per record, their summaries in one sorted set, the last one as the current record."""
    expires_at = expires_at or int(time.time()) + 86400
    saved_at = int(time.time())
    client = redis.Redis.from_url(url)
    with client.pipeline(transaction=False) as pipe:
        for number in range(1, count + 1):
            user_id, token = f"bench_u{(number - 1) % users}", bench_token(f"{tag}-{number - 1}", token_chars)
            fields = {"user_id": user_id, "token": token, "expires_at": expires_at, "saved_at": saved_at}
            pipe.hset(f"{key_prefix}:r:{number}", mapping=fields)
            summary = {"id": f"store_{number:03d}", "user_id": user_id, "token_preview": preview(token),
                       "expires_at": expires_at, "saved_at": saved_at}
            pipe.zadd(f"{key_prefix}:recent", {json.dumps(summary): number})
            if number == count:
                pipe.hset(f"{key_prefix}:current", mapping={"id": f"store_{number:03d}", **fields})
            if number % chunk == 0:
                pipe.execute()
        pipe.execute()
    client.close()


# --- load drivers --------------------------------------------------------------------------


def wrk_drive(base_url: str, mode: str, duration: float, connections: int, threads: int, ids: int,
              expires: str, token_chars: int, histogram: bool = False) -> dict:
    """One wrk run; with `histogram`, its latencies as [µs, count] pairs too (see merged_p99)."""
    env = {**os.environ, "BENCH_MODE": "path" if mode.startswith("/") else mode, "BENCH_PATH": mode,
           "BENCH_IDS": str(ids), "BENCH_EXPIRES": expires, "BENCH_TOKEN_CHARS": str(token_chars),
           "BENCH_HISTOGRAM": "1" if histogram else "0"}
    seconds = max(1, round(duration))
    threads = min(threads, connections)  # wrk needs a connection per thread
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
               "-s", str(WRK_SCRIPT), base_url]
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = [text for text in output.splitlines() if text.startswith("{")][-1]
    raw = json.loads(line)
    errors = sum(raw["errors"].values())
    seconds_taken = raw["duration_us"] / 1e6
    result = {
        "requests": raw["requests"],
        "errors": errors,
        "seconds": seconds_taken,
        "rps": raw["requests"] / seconds_taken,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
    }
    if histogram:
        result["histogram"] = raw["histogram"]
    return result


class RequestMaker:
    """The Python twin of bench/wrk.lua's request builders."""

    def __init__(self, ids: int, expires: str, token_chars: int, tag: str):
        self.ids, self.expires, self.token_chars, self.tag = ids, expires, token_chars, tag
        self.counter = 0
        self.random = random.Random(tag)

    def _token(self) -> str:
        self.counter += 1
        return bench_token(f"{self.tag}-{self.counter}", self.token_chars)

    def make(self, mode: str) -> tuple[str, str, str | None]:
        if mode == "mixed":
            mode = self.random.choices([kind for kind, _ in MIX], [weight for _, weight in MIX])[0]
        item = f"{PREFIX}/store_{self.random.randint(1, self.ids):03d}"
        if mode == "get_id":
            return "GET", item, None
        if mode in ("current", "validity"):
            return "GET", f"{PREFIX}/{mode}", None
        if mode == "list":
            return "GET", f"{PREFIX}?page=1&limit=20", None
        if mode == "post":
            user = f"bench_u{self.random.randint(0, 999)}"
            return "POST", PREFIX, json.dumps({"user_id": user, "token": self._token(), "expires_at": self.expires})
        if mode == "put":
            return "PUT", item, json.dumps({"token": self._token(), "expires_at": self.expires})
        if mode.startswith("/"):
            return "GET", mode, None
        raise ValueError(mode)


def python_drive(base_url: str, mode: str, duration: float, connections: int, threads: int, ids: int,
                 expires: str, token_chars: int, histogram: bool = False) -> dict:
    """A small closed-loop load generator: `connections` keep-alive connections, one thread each."""
    host, port = base_url.removeprefix("http://").split(":")
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def worker(number: int) -> None:
        maker = RequestMaker(ids, expires, token_chars, f"p{number}")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        mine, errors = [], 0
        while time.perf_counter() < deadline:
            method, path, body = maker.make(mode)
            headers = {"Content-Type": "application/json"} if body else {}
            started = time.perf_counter()
            try:
                connection.request(method, path, body, headers)
                response = connection.getresponse()
                response.read()
                if response.status >= 400:
                    errors += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=10)
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)
            counts["requests"] += len(mine)
            counts["errors"] += errors

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(number,)) for number in range(connections)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    latencies.sort()

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * fraction))] * 1000 if latencies else 0.0

    result = {**counts, "seconds": seconds, "rps": counts["requests"] / seconds,
              "p50_ms": percentile(0.50), "p99_ms": percentile(0.99)}
    if histogram:
        counted = collections.Counter(round(latency * 1e6) for latency in latencies)
        result["histogram"] = sorted(counted.items())
    return result


def merged_p99(*histograms: list) -> float:
    """p99 in ms of several runs taken together, from their [µs, count] pairs (percentiles
    of separate runs cannot be combined)."""
    pairs = sorted((value, count) for histogram in histograms for value, count in histogram)
    total = sum(count for _, count in pairs)
    seen = 0
    for value, count in pairs:
        seen += count
        if seen >= 0.99 * total:
            return value / 1000
    return 0.0


Driver = Callable[..., dict]


def combine(runs: list[dict]) -> dict:
    """Several rounds of one side: requests/s over all of them, latencies the median of the
    rounds' (one round disturbed by other load on the machine moves a median little)."""
    requests = sum(run["requests"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    return {
        "requests": requests,
        "errors": sum(run["errors"] for run in runs),
        "rps": round(requests / seconds, 1),
        "p50_ms": round(statistics.median(run["p50_ms"] for run in runs), 3),
        "p99_ms": round(statistics.median(run["p99_ms"] for run in runs), 3),
        "rounds": [round(run["rps"], 1) for run in runs],
        "cpu_us_per_request": round(sum(run["cpu_seconds"] for run in runs) / max(requests, 1) * 1e6, 1),
    }


def paired(service_runs: list[dict], other_runs: list[dict]) -> dict:
    """Service against another side. Round i of each side ran back to back, so each round
    gives a ratio measured under the same conditions; the ratio judged is their median.
    (Load from outside the benchmark comes and goes within seconds; a burst that lands on
    one side of one round moves the pooled figure, kept beside it, but not the median.)"""
    service, other = combine(service_runs), combine(other_runs)
    ratios = [run["rps"] / max(them["rps"], 1e-6) for run, them in zip(service_runs, other_runs, strict=True)]
    # The middle half of the rounds' ratios: wide when outside load came and went.
    first_quartile, _, third_quartile = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "ratio": round(statistics.median(ratios), 3),
        "round_ratios": [round(ratio, 3) for ratio in ratios],
        "round_ratio_quartiles": [round(first_quartile, 3), round(third_quartile, 3)],
        "pooled_ratio": round(service["rps"] / max(other["rps"], 1e-6), 3),
        "p99_ratio": round(service["p99_ms"] / max(other["p99_ms"], 1e-6), 3),
        "cpu_ratio": round(other["cpu_us_per_request"] / max(service["cpu_us_per_request"], 1e-6), 3),
    }


def compare(service_runs: list[dict], baseline_runs: list[dict]) -> dict:
    """Service against the same-work baseline: both sides combined, and `paired`'s ratios."""
    return {"service": combine(service_runs), "baseline": combine(baseline_runs),
            **paired(service_runs, baseline_runs)}


def judged(pair: dict, target: float | None, p99_limit: float) -> dict:
    """`pair` with its targets and whether it met them (no ratio target: p99 alone)."""
    met = pair["p99_ratio"] <= p99_limit and (target is None or pair["ratio"] >= target)
    return {**pair, "target": target, "p99_limit": p99_limit, "met": met}


# --- the runs ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.key = generate_key("bench")
        self.driver: Driver = wrk_drive if args.driver == "wrk" else python_drive
        self.expires = iso(time.time() + 7 * 86400)

    def service_env(self, url: str, **extra: str) -> dict[str, str]:
        return clean_environment(SESSIONSVC_REDIS_URL=url, SESSIONSVC_ENCRYPTION_KEYS=self.key,
                                 SESSIONSVC_ENV="development", SESSIONSVC_KEY_PREFIX=SERVICE_PREFIX, **extra)

    def baseline_env(self, url: str, **extra: str) -> dict[str, str]:
        return clean_environment(SESSIONSVC_REDIS_URL=url, SESSIONSVC_KEY_PREFIX=BASELINE_PREFIX, **extra)

    def naive_env(self, url: str, **extra: str) -> dict[str, str]:
        return clean_environment(SESSIONSVC_REDIS_URL=url, SESSIONSVC_KEY_PREFIX=NAIVE_PREFIX, **extra)

    def drive(self, server: Server, mode: str, duration: float, connections: int | None = None,
              ids: int | None = None, histogram: bool = False) -> dict:
        cpu_before = server.cpu_seconds()
        run = self.driver(server.url, mode, duration, connections or self.args.connections, self.args.threads,
                          ids or self.args.seed, self.expires, self.args.token_chars, histogram=histogram)
        run["cpu_seconds"] = server.cpu_seconds() - cpu_before
        return run

    def side_by_side(self, servers: dict[str, Server], mode: str, connections: int | None = None
                     ) -> dict[str, list[dict]]:
        """Warm every side up, then run the configured rounds, each side once per round.
        The order turns from round to round (and runs backwards every other cycle), so no
        side always follows the same one."""
        args = self.args
        names = list(servers)
        if args.warmup:
            for name in names:
                self.drive(servers[name], mode, args.warmup, connections)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            order = names[shift:] + names[:shift]
            if (round_number // len(names)) % 2:
                order.reverse()
            for name in order:
                runs[name].append(self.drive(servers[name], mode, args.duration, connections))
        return runs

    # -- make bench --------------------------------------------------------------------------

    def main_rows(self) -> list[tuple[str, str, int, float | None, float, float | None, float]]:
        """(row key, mode, connections, target and p99 limit against the same-work baseline,
        target and p99 limit against the naive app) of the main table."""
        args = self.args
        rows = [(mode, mode, args.connections, ENDPOINTS[mode][1], P99_LIMIT, NAIVE_TARGET, P99_LIMIT)
                for mode in args.endpoints.split(",") if mode]
        if args.mixed:
            rows.append(("mixed", "mixed", args.connections, None, P99_LIMIT, None, P99_LIMIT))
            if args.heavy_connections:
                rows.append((f"mixed@{args.heavy_connections}", "mixed", args.heavy_connections, None, HEAVY_P99_LIMIT,
                             None, HEAVY_P99_LIMIT))
        return rows

    def main_table(self) -> dict:
        args = self.args
        with RedisServer(self.workdir) as redis_server:
            url = redis_server.url
            log(f"seeding {args.seed} records per side ...")
            seed(url, self.key, args.seed, token_chars=args.token_chars)
            seed(url, None, args.seed, key_prefix=BASELINE_PREFIX, token_chars=args.token_chars)
            seed_naive(url, args.seed, token_chars=args.token_chars)
            with gunicorn("wsgi:app", self.service_env(url), self.workdir, "service") as service, \
                    gunicorn("bench.baseline_app:app", self.baseline_env(url), self.workdir, "baseline") as baseline, \
                    gunicorn("bench.naive_app:app", self.naive_env(url), self.workdir, "naive",
                             config=NAIVE_CONFIG) as naive:
                servers = {"service": service, "baseline": baseline, "naive": naive}
                endpoints = {}
                for key, mode, connections, target, p99_limit, naive_target, naive_p99_limit in self.main_rows():
                    runs = self.side_by_side(servers, mode, connections)
                    result = {side: combine(runs[side]) for side in SIDES}
                    result["connections"] = connections
                    result["vs_baseline"] = judged(paired(runs["service"], runs["baseline"]), target, p99_limit)
                    result["vs_naive"] = judged(paired(runs["service"], runs["naive"]), naive_target,
                                                naive_p99_limit)
                    endpoints[key] = result
                    log(format_row(row_label(key), result))
        return {"endpoints": endpoints}

    # -- worker sweep ------------------------------------------------------------------------

    def sweep(self) -> dict:
        args = self.args
        rows = []
        with RedisServer(self.workdir) as redis_server:
            url = redis_server.url
            seed(url, self.key, args.seed, token_chars=args.token_chars)
            seed(url, None, args.seed, key_prefix=BASELINE_PREFIX, token_chars=args.token_chars)
            for config in args.sweep_configs.split(","):
                worker_class, workers, threads = config.split(":")
                extra = ("-k", worker_class, "-w", workers, "--threads", threads)
                name = f"{worker_class}-w{workers}" + (f"-t{threads}" if int(threads) > 1 else "")
                with gunicorn("wsgi:app", self.service_env(url), self.workdir, name, extra) as service, \
                        gunicorn("bench.baseline_app:app", self.baseline_env(url), self.workdir, name + "-base",
                                 extra) as baseline:
                    runs = self.side_by_side({"service": service, "baseline": baseline}, "mixed")
                result = compare(runs["service"], runs["baseline"])
                result["config"] = name
                rows.append(result)
                log(f"{name:16} service {result['service']['rps']:8.0f} req/s p99 {result['service']['p99_ms']:6.1f} ms"
                    f" | baseline {result['baseline']['rps']:8.0f} req/s p99 {result['baseline']['p99_ms']:6.1f} ms"
                    f" | ratio {result['ratio']:.2f}")
        return {"sweep": rows}

    # -- growth ------------------------------------------------------------------------------

    def scale(self) -> dict:
        """Latency of list page 1, page 500, current, validity and POST as the store grows.
        Page 500 is asked with limit 2 (records 999-1000), so that it exists at every size,
        1,000 records included. One connection, so latency is service time, not queueing or
        a share of another request; the Redis server's own time per script call (INFO
        commandstats) is reported next to it."""
        args = self.args
        sizes = [int(size) for size in args.scale_sizes.split(",")]
        probes = {
            "list page 1": f"{PREFIX}?page=1&limit=20",
            "list page 500": f"{PREFIX}?page=500&limit=2",
            "current": f"{PREFIX}/current",
            "validity": f"{PREFIX}/validity",
            "post": "post",
        }
        rows: dict[str, dict[str, dict]] = {name: {} for name in probes}
        seeded = 0
        with RedisServer(self.workdir) as redis_server:
            url = redis_server.url
            client = redis.Redis.from_url(url)
            with gunicorn("wsgi:app", self.service_env(url), self.workdir, "service-scale") as service:
                for size in sizes:
                    started = time.monotonic()
                    seed(url, self.key, size - seeded, token_chars=args.scale_token_chars, users=10_000,
                         tag=f"s{size}")
                    log(f"seeded {size - seeded} records (store: {size}) in {time.monotonic() - started:.1f} s,"
                        f" redis used_memory {client.info('memory')['used_memory_human']}")
                    seeded = size
                    for name, target in probes.items():
                        client.config_resetstat()
                        run = self.drive(service, target, args.scale_duration, connections=args.scale_connections,
                                         ids=size)
                        stats = client.info("commandstats").get("cmdstat_evalsha", {})
                        run["redis_us_per_call"] = round(float(stats.get("usec_per_call", 0.0)), 1)
                        rows[name][str(size)] = run
                        log(f"  {size:>9} {name:14} p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms"
                            f"  {run['rps']:7.0f} req/s  redis {run['redis_us_per_call']:6.1f} us/call")
            client.close()
        first, last = str(sizes[0]), str(sizes[-1])
        ratios = {name: round(sizes_[last]["p50_ms"] / max(sizes_[first]["p50_ms"], 1e-6), 3)
                  for name, sizes_ in rows.items()}
        return {"scale": {"sizes": sizes, "rows": rows, "p50_ratio_last_first": ratios}}

    # -- memory ------------------------------------------------------------------------------

    def memory(self) -> dict:
        args = self.args
        count = args.memory_records
        options = tuple(part for option in args.redis_option
                        for part in ("--" + option.split()[0], *option.split()[1:]))
        with RedisServer(self.workdir, *options) as redis_server:
            url = redis_server.url
            client = redis.Redis.from_url(url)
            client.ping()
            before = client.info("memory")["used_memory"]
            seed(url, self.key, count, token_chars=800, users=max(1, count // 4), tag="m")
            after = client.info("memory")["used_memory"]
            root = "{" + SERVICE_PREFIX + "}"
            gen = (client.get(root + ":gen") or b"0").decode()

            def usage(key: str) -> int:
                return int(client.memory_usage(key, samples=0) or 0)

            sample = random.Random(1).sample(range(1, count + 1), min(count, 1000))
            record_bytes = statistics.fmean(usage(f"{root}:r:{number}") for number in sample) * count
            encoding = client.object("encoding", f"{root}:r:{sample[0]}").decode()
            user_bytes = sum(usage(key.decode()) for key in client.scan_iter(match=f"{root}:u:{gen}:*", count=1000))
            structures = {
                "records (hashes)": record_bytes,
                "all index (zset)": usage(f"{root}:all:{gen}"),
                "exp index (zset)": usage(f"{root}:exp:{gen}"),
                "user indexes (zsets)": user_bytes,
                "due index (zset)": usage(f"{root}:due:{gen}"),
                "event stream (its created event)": usage(f"{root}:events"),
            }
            client.close()
        total = after - before
        result = {
            "redis_options": args.redis_option,
            "records": count,
            "users": max(1, count // 4),
            "token_chars": 800,
            "used_memory_delta": total,
            "bytes_per_record": round(total / count, 1),
            "record_encoding": encoding,
            "structures_bytes_per_record": {name: round(value / count, 1) for name, value in structures.items()},
        }
        log(json.dumps(result, indent=2))
        return {"memory": result}

    # -- expiry burst ------------------------------------------------------------------------

    def burst(self) -> dict:
        """`burst_records` records expiring in the same second (retention 0, so Redis deletes
        them then): p99 of list and POST (concurrently) before and after, then the index
        checked exact once the traffic has pruned it."""
        args = self.args
        window = args.burst_seconds
        result: dict = {"records": args.burst_records, "window_seconds": window,
                        "first_seconds": min(window, args.burst_first), "normal_seconds": args.burst_normal}
        with RedisServer(self.workdir) as redis_server:
            url = redis_server.url
            client = redis.Redis.from_url(url)
            env = self.service_env(url, SESSIONSVC_RETENTION_SECONDS="0")
            with gunicorn("wsgi:app", env, self.workdir, "service-burst") as service:
                seed(url, self.key, args.seed, retention_seconds=0, token_chars=args.token_chars)
                started = time.time()
                # Seeded after the long-lived ones: the dying records are the most recent saves.
                dies_at = int(started) + args.burst_lead
                seed(url, self.key, args.burst_records, retention_seconds=0, token_chars=200, expires_at=dies_at,
                     tag="burst")
                if time.time() > dies_at - args.burst_normal - 1:
                    raise RuntimeError("seeding the burst took longer than --burst-lead allows; raise it")
                log(f"seeded {args.burst_records} records dying at {iso(dies_at)} in {time.time() - started:.1f} s")
                result["normal"] = self.list_and_post(service, args.burst_normal)
                time.sleep(max(0.0, dies_at - time.time() + 0.2))
                log("burst: the records are dead now")
                first = min(window, args.burst_first)
                # while the index is pruned, then the rest of the window
                result["first"] = self.list_and_post(service, first, histogram=True)
                result["burst"] = self.list_and_post(service, max(first, window - first), histogram=True)

            def times_before(name: str, p99_ms: float) -> float:
                return round(p99_ms / max(result["normal"][name]["p99_ms"], 1e-6), 2)

            result["minute_p99_ms"] = {  # the whole window after the burst, both parts together
                name: merged_p99(result["first"][name].pop("histogram"), result["burst"][name].pop("histogram"))
                for name in ("list", "post")
            }
            result["ratio_p99_minute"] = {
                name: times_before(name, p99_ms) for name, p99_ms in result["minute_p99_ms"].items()
            }
            result["ratio_p99"] = {  # the worse of the two parts after the burst
                name: times_before(name, max(result[part][name]["p99_ms"] for part in ("first", "burst")))
                for name in ("list", "post")
            }
            result["index"] = index_check(client)
            client.close()
        log(json.dumps(result, indent=2))
        return {"burst": result}

    def list_and_post(self, service: Server, duration: float, histogram: bool = False) -> dict[str, dict]:
        half = max(1, self.args.connections // 2)
        results: dict[str, dict] = {}

        def run(mode: str) -> None:
            results[mode] = self.drive(service, mode, duration, connections=half, histogram=histogram)

        threads = [threading.Thread(target=run, args=(mode,)) for mode in ("list", "post")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


def index_check(client: redis.Redis, root: str = "{" + SERVICE_PREFIX + "}") -> dict:
    """Every index entry of the current generation points at a live record, and every
    live record is in all three indexes: the index is exact."""
    gen = (client.get(root + ":gen") or b"0").decode()
    now_ms = int(client.time()[0]) * 1000
    dead_entries = client.zcount(f"{root}:exp:{gen}", "-inf", now_ms)
    records = {}
    for key in client.scan_iter(match=f"{root}:r:*", count=5000):
        fields = client.hmget(key, "u", "g")
        if fields[0] is not None and fields[1].decode() == gen:
            records[key.decode().rsplit(":", 1)[1]] = fields[0].decode()
    listed = {member.decode() for member in client.zrange(f"{root}:all:{gen}", 0, -1)}
    expiring = {member.decode() for member in client.zrange(f"{root}:exp:{gen}", 0, -1)}
    user_entries = sum(client.zcard(key) for key in client.scan_iter(match=f"{root}:u:{gen}:*", count=5000))
    exact = (
        listed == set(records)
        and expiring == {f"{number}:{user}" for number, user in records.items()}
        and user_entries == len(records)
    )
    return {"live_records": len(records), "all_index": len(listed), "exp_index": len(expiring),
            "user_index_entries": user_entries, "dead_entries_left": dead_entries, "exact": exact}


# --- output ------------------------------------------------------------------------------


def load_description(args: argparse.Namespace, run: str) -> str:
    threads = f", {args.threads} threads" if args.driver == "wrk" else ""
    if run == "scale":  # wrk_drive runs no more threads than connections
        threads = f", {min(args.threads, args.scale_connections)} thread(s)" if args.driver == "wrk" else ""
        return f"{args.driver}, {args.scale_connections} connection(s){threads}, {args.scale_duration:g} s per probe"
    if run == "burst":
        return f"{args.driver}, {max(1, args.connections // 2)} connections each for list and POST{threads}"
    heavy = ""
    if run == "main" and args.mixed and args.heavy_connections:
        heavy = f" (the last row {args.heavy_connections})"
    return (f"{args.driver}, {args.connections} connections{heavy}{threads}, "
            f"{args.rounds}×{args.duration:g} s per side after {args.warmup:g} s warm-up")


def row_label(key: str) -> str:
    """A main-table row's name: an endpoint's label, or the mixed workload at its connections."""
    if key in ENDPOINTS:
        return ENDPOINTS[key][0]
    _, _, connections = key.partition("@")
    return f"mixed workload, {connections} connections" if connections else "mixed workload"


def target_text(target: float | None) -> str:
    return "" if target is None else f" (≥ {target:.2f})"


def format_row(label: str, result: dict) -> str:
    sides = " | ".join(f"{side} {result[side]['rps']:6.0f} req/s p50 {result[side]['p50_ms']:6.2f} "
                       f"p99 {result[side]['p99_ms']:6.2f} ms" for side in SIDES)
    pairs = " | ".join(
        f"vs {name}: ratio {pair['ratio']:.2f}{target_text(pair['target'])} (pooled {pair['pooled_ratio']:.2f},"
        f" middle half {pair['round_ratio_quartiles'][0]:.2f}-{pair['round_ratio_quartiles'][1]:.2f})"
        f" p99 x{pair['p99_ratio']:.2f} (<= {pair['p99_limit']:.1f}) {'ok' if pair['met'] else 'MISSED'}"
        for name, pair in (("same-work", result["vs_baseline"]), ("naive", result["vs_naive"])))
    cpu = " / ".join(f"{result[side]['cpu_us_per_request']:.0f}" for side in SIDES)
    return f"{label:28} {sides} | {pairs} | cpu/req {cpu} us"


def markdown_main(report: dict) -> str:
    lines = [
        f"Run {report['date']} on {report['cores']} cores ({report['machine']}), command: `{report['command']}`",
        f"(load: {report['load']}; the machine's load average {report['load_average_before'][0]:.2f} before, "
        f"{report['load_average_after'][0]:.2f} after).",
        "",
        "| endpoint | service req/s | p50 ms | p99 ms | same-work req/s | p99 ms | naive req/s | p99 ms "
        "| ratio to same-work (target) | p99 × | ratio to naive (target) | p99 × (limit) "
        "| CPU µs/req service / same-work / naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, result in report["endpoints"].items():
        service, baseline, naive = (result[side] for side in SIDES)
        cells = []
        for pair in (result["vs_baseline"], result["vs_naive"]):
            ratio = f"{pair['ratio']:.2f}{target_text(pair['target'])}"
            p99 = f"{pair['p99_ratio']:.2f}"
            if pair is result["vs_naive"]:
                p99 += f" (≤ {pair['p99_limit']:.1f})"
            if pair["target"] is not None and pair["ratio"] < pair["target"]:
                ratio += " **missed**"
            if pair["p99_ratio"] > pair["p99_limit"]:
                p99 += " **missed**"
            cells += [ratio, p99]
        lines.append(
            f"| {row_label(key)} | {service['rps']:.0f} | {service['p50_ms']:.2f} | {service['p99_ms']:.2f} "
            f"| {baseline['rps']:.0f} | {baseline['p99_ms']:.2f} | {naive['rps']:.0f} | {naive['p99_ms']:.2f} "
            f"| {' | '.join(cells)} "
            f"| {service['cpu_us_per_request']:.0f} / {baseline['cpu_us_per_request']:.0f} "
            f"/ {naive['cpu_us_per_request']:.0f} |"
        )
    return "\n".join(lines)


def markdown_sweep(report: dict) -> str:
    lines = [
        f"Run {report['date']} on {report['cores']} cores, command: `{report['command']}` (load: {report['load']}).",
        "",
        "| workers | service req/s | p50 ms | p99 ms | baseline req/s | p99 ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sweep"]:
        service, baseline = row["service"], row["baseline"]
        lines.append(f"| {row['config']} | {service['rps']:.0f} | {service['p50_ms']:.2f} | {service['p99_ms']:.2f} "
                     f"| {baseline['rps']:.0f} | {baseline['p99_ms']:.2f} | {row['ratio']:.2f} |")
    return "\n".join(lines)


def markdown_scale(report: dict) -> str:
    scale = report["scale"]
    sizes = [str(size) for size in scale["sizes"]]
    header = " | ".join(f"{int(size):,} p50 / p99 ms (redis µs)" for size in sizes)
    lines = [
        f"Run {report['date']} on {report['cores']} cores, command: `{report['command']}` (load: {report['load']}).",
        "",
        f"| probe | {header} | p50 {int(sizes[-1]):,} / {int(sizes[0]):,} |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for name, by_size in scale["rows"].items():
        cells = " | ".join(
            f"{by_size[size]['p50_ms']:.2f} / {by_size[size]['p99_ms']:.2f} ({by_size[size]['redis_us_per_call']:.0f})"
            for size in sizes)
        lines.append(f"| {name} | {cells} | {scale['p50_ratio_last_first'][name]:.2f} |")
    return "\n".join(lines)


def markdown_memory(report: dict) -> str:
    memory = report["memory"]
    lines = [
        f"Run {report['date']}, command: `{report['command']}`: {memory['records']:,} records of "
        f"{memory['token_chars']}-character JWTs over {memory['users']:,} users; record hashes are "
        f"`{memory['record_encoding']}`-encoded.",
        "",
        f"**{memory['bytes_per_record']:.0f} bytes per record** (`used_memory` delta "
        f"{memory['used_memory_delta']:,} bytes).",
        "",
        "| structure | bytes per record (MEMORY USAGE) |",
        "|---|---:|",
    ]
    for name, value in memory["structures_bytes_per_record"].items():
        lines.append(f"| {name} | {value:.0f} |")
    return "\n".join(lines)


def markdown_burst(report: dict) -> str:
    burst = report["burst"]
    index = burst["index"]
    lines = [
        f"Run {report['date']} on {report['cores']} cores, command: `{report['command']}`: "
        f"{burst['records']:,} records dying in the same second, list and POST driven together for "
        f"{burst['window_seconds']:g} s right after (the first {burst['first_seconds']:g} s reported apart), "
        f"and for {burst['normal_seconds']:g} s before under the same load.",
        "",
        "| | before p50 / p99 ms | first seconds after p50 / p99 ms | rest of the window p50 / p99 ms "
        "| whole window p99 ms (× before) | worse part's p99 × before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("list", "post"):
        normal, first, after = burst["normal"][name], burst["first"][name], burst["burst"][name]
        lines.append(f"| {name} | {normal['p50_ms']:.2f} / {normal['p99_ms']:.2f} | "
                     f"{first['p50_ms']:.2f} / {first['p99_ms']:.2f} | "
                     f"{after['p50_ms']:.2f} / {after['p99_ms']:.2f} | "
                     f"{burst['minute_p99_ms'][name]:.2f} ({burst['ratio_p99_minute'][name]:.2f}) | "
                     f"{burst['ratio_p99'][name]:.2f} |")
    lines += [
        "",
        f"Index afterwards: {index['live_records']:,} live records, all-index {index['all_index']:,}, "
        f"exp-index {index['exp_index']:,}, user-index entries {index['user_index_entries']:,}, "
        f"dead entries left {index['dead_entries_left']}: **{'exact' if index['exact'] else 'NOT exact'}**.",
    ]
    return "\n".join(lines)


MARKDOWN = {"main": markdown_main, "sweep": markdown_sweep, "scale": markdown_scale, "memory": markdown_memory,
            "burst": markdown_burst}


def update_docs(path: Path, section: str, text: str) -> None:
    """Replace what stands between `<!-- bench:SECTION -->` and `<!-- /bench:SECTION -->`."""
    content = path.read_text()
    pattern = re.compile(rf"(<!-- bench:{section} -->\n).*?(<!-- /bench:{section} -->)", re.S)
    if not pattern.search(content):
        raise RuntimeError(f"{path} has no bench:{section} markers")
    path.write_text(pattern.sub(lambda match: match.group(1) + text + "\n" + match.group(2), content))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="compare gunicorn worker classes and counts")
    parser.add_argument("--scale", action="store_true", help="growth run: 1k, 100k, 1M records")
    parser.add_argument("--memory", action="store_true", help="Redis bytes per record")
    parser.add_argument("--burst", action="store_true", help="expiry burst")
    parser.add_argument("--driver", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=8,
                        help="alternations service/baseline per endpoint (each on new connections)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load per side first")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset of the table")
    parser.add_argument("--no-mixed", dest="mixed", action="store_false",
                        help="main table: leave out the mixed-workload rows")
    parser.add_argument("--heavy-connections", type=int, default=256,
                        help="main table: the mixed workload again at this many connections (0: not)")
    parser.add_argument("--seed", type=int, default=10_000, help="records seeded per side")
    parser.add_argument("--token-chars", type=int, default=800)
    parser.add_argument("--sweep-configs", default=SWEEP, help="worker_class:workers:threads,...")
    parser.add_argument("--scale-sizes", default="1000,100000,1000000")
    parser.add_argument("--scale-duration", type=float, default=3.0)
    parser.add_argument("--scale-connections", type=int, default=1,
                        help="one: each probe's latency is its own request's, not a share of another's")
    parser.add_argument("--scale-token-chars", type=int, default=40)
    parser.add_argument("--memory-records", type=int, default=100_000)
    parser.add_argument("--redis-option", action="append", default=[],
                        help="memory run: a redis-server setting, e.g. 'hash-max-listpack-value 1024'")
    parser.add_argument("--burst-records", type=int, default=100_000)
    parser.add_argument("--burst-seconds", type=float, default=60.0, help="measured window after the burst")
    parser.add_argument("--burst-first", type=float, default=5.0, help="first part of the window, reported apart")
    parser.add_argument("--burst-normal", type=float, default=10.0, help="measured window before the burst")
    parser.add_argument("--burst-lead", type=int, default=40, help="seconds from seeding to the burst")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    # A terminated run still stops its redis-server and gunicorns (the finally blocks).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    if args.driver == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk), or use --driver python")
    runs = [name for name in ("sweep", "scale", "memory", "burst") if getattr(args, name)] or ["main"]
    command = "python -m bench.run" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sessionsvc-bench-") as workdir:
        bench = Bench(args, Path(workdir))
        for name in runs:
            started = time.monotonic()
            report = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "cores": os.cpu_count(),
                "machine": platform.machine() + " " + platform.processor(),
                "command": command,
                "load": load_description(args, name),
                "load_average_before": os.getloadavg(),
            }
            report.update(getattr(bench, "main_table" if name == "main" else name)())
            report["load_average_after"] = os.getloadavg()
            report["seconds"] = round(time.monotonic() - started, 1)
            out = args.results / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
            out.write_text(json.dumps(report, indent=2) + "\n")
            log(f"{name}: {report['seconds']} s; results in {out}")
            if not args.no_docs:
                update_docs(args.docs, name, MARKDOWN[name](report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
