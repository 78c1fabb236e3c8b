"""Where one request's cost goes, per endpoint: Redis, the client, the cipher, the schemas,
the audit line, the metrics, the rest of the app, the access line, gunicorn.

    python -m bench.decompose                    # every endpoint: µs and instructions (slow: valgrind)
    python -m bench.decompose --no-valgrind      # µs only
    python -m bench.decompose --cases get_id --markdown out.md

How each part is measured (µs: CPU time on this machine, the best of several repeats for
the parts measured in process; instructions: valgrind, user space only, the difference
between runs of 100 and 400 steps, so start-up cancels out). In process means as in a
gevent worker: logging set up first (as gunicorn's master does), then gevent's patching,
then the app built:

- **Redis, script** and its commands: a private redis-server seeded with `--records`
  records (10,000) per side as `make bench` seeds it; each side under `make bench`'s load
  (wrk, 16 connections, the production gunicorn settings), `--rounds` runs of `--seconds`
  with the sides in turn, then `INFO commandstats` after each: EVALSHA's time per
  request, and each command the scripts ran (commands run by a script are counted there
  too). Of each CPU figure the least of the runs counts: other work on a shared machine
  only ever adds to it. **Redis, rest** is the rest of redis-server's
  CPU time meanwhile (reading requests, writing replies, its event loop), from
  `/proc/<pid>/task/*/schedstat`.
- **whole worker**: the gunicorn processes' CPU time per request in that same run (user
  and system, as `bench/run.py` reads it); its instructions are counted under callgrind
  (`callgrind_control`, as `bench/stack_cost.py` does, but one worker of the production
  class, sent requests one after another on one keep-alive connection).
- **redis-py, its socket and gevent's wait**: the app called in process through WSGI
  against the real Redis, less the same app with every Redis reply replayed
  (`bench/app_cost.py`'s `Replaying`): what the client side of a round-trip costs, the
  event loop's turn while the reply comes included (CPU time, so not the wait itself).
- **AES-GCM and HMAC**: the vault's cipher calls an endpoint makes (open and fingerprint
  for a reveal, seal for a save), called directly on an 800-character token.
- **schemas**: marshmallow's work for the endpoint, called directly: the response schema's
  `dump` and, for POST and PUT, the body schema's `load` (query and absent-header schemas
  are parsed once per distinct value, `sessionsvc.parsing`, so they cost a lookup).
- **audit line**: the app with the audit logger's level above INFO, less the app as it is.
- **metrics**: the app without the request metrics middleware and the store observer,
  less the app as it is.
- **rest of the app**: the app with replies replayed, less the four parts above: Flask,
  werkzeug, flask-smorest and webargs, the views, vault and store code.
- **access line**: gunicorn's `Logger.access` as the service configures it
  (`gunicorn.conf.py`: its format and `sessionsvc.logs.AccessJsonFormatter`), called
  directly with the request's environ and headers, written to a file.
- **gunicorn and WSGI**: the whole worker less the app with Redis and the access line:
  HTTP parsing, the environ, writing the response, the event loop (and the service's
  turn, `sessionsvc.turns`).

The same-work baseline and the naive app are measured alike where they do the same (the
whole worker and Redis, the app with its client in process), for the tables' last rows.

Shares are of the whole: worker plus Redis. valgrind's CPU has no SHA extensions, so
HMAC-SHA256 counts several times the instructions it takes natively; the µs do not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import json
import logging
import os
import re
import resource
import runpy
import subprocess
import sys
import tempfile
import time
import timeit
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis

from bench.app_cost import CASES, Replaying, call, environ
from bench.run import (
    BASELINE_PREFIX,
    NAIVE_CONFIG,
    NAIVE_PREFIX,
    PREFIX,
    SERVICE_PREFIX,
    Bench,
    RequestMaker,
    Server,
    bench_token,
    gunicorn,
    iso,
    seed,
    seed_naive,
)
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

STEPS = (100, 400)  # valgrind runs: the difference of these, per step
IN_PROCESS = ("app", "app_no_audit", "app_no_metrics", "app_redis", "cipher", "schemas", "access", "baseline_redis",
              "naive_redis")
TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)
ROWS = (  # (key, label) of the table, in order
    ("redis_script", "Redis: the script (commandstats)"),
    ("redis_rest", "Redis: the rest of its CPU (I/O, event loop)"),
    ("client", "redis-py, its socket and gevent's wait (client side)"),
    ("cipher", "AES-GCM seal/open, HMAC fingerprint"),
    ("schemas", "schemas (marshmallow load/dump)"),
    ("audit", "audit line"),
    ("metrics", "metrics (request and store)"),
    ("app_rest", "rest of the app (Flask, flask-smorest, views, vault, store)"),
    ("access", "access line (gunicorn + AccessJsonFormatter)"),
    ("gunicorn", "gunicorn and WSGI (HTTP, environ, response, event loop)"),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the parts measured in process ---------------------------------------------------------


def bodies() -> dict[str, bytes]:
    token = bench_token("cost", 800)
    expires = iso(time.time() + 86400)
    return {
        "post": json.dumps({"user_id": "bench_user", "token": token, "expires_at": expires}).encode(),
        "put": json.dumps({"token": token, "expires_at": expires}).encode(),
    }


def service_app(url: str, workdir: Path, *, replay: bool, audit: bool = True, metrics: bool = True) -> Any:
    """The service as `make run` builds it (JSON lines to a file), with its Redis replies
    replayed or not, and the audit line or the metrics left out when asked."""
    from sessionsvc import create_app
    from sessionsvc import metrics as metrics_module
    from sessionsvc.crypto import generate_key

    if not metrics:  # both looked up when create_app runs
        metrics_module.RequestMetrics = lambda wsgi_app: wsgi_app
        metrics_module.observe_store = lambda *args: None
    client = redis.Redis.from_url(url)
    wrapped = Replaying(client) if replay else client
    app = create_app({
        "SESSIONSVC_REDIS_URL": url, "SESSIONSVC_ENCRYPTION_KEYS": generate_key("bench"),
        "SESSIONSVC_ENV": "development", "SESSIONSVC_KEY_PREFIX": SERVICE_PREFIX, "SESSIONSVC_LOG_FORMAT": "json",
    }, redis_client=wrapped)
    log_file = open(workdir / "app.log", "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger("sessionsvc").handlers:
        handler.setStream(log_file)
    if not audit:
        logging.getLogger("sessionsvc.audit").setLevel(logging.WARNING)
    create = bodies()["post"]
    for _ in range(21):  # a full list page (limit 20)
        assert call(app, environ("POST", PREFIX, "", create)).startswith("201")
    if replay:
        wrapped.replay()
    return app


def app_step(case: str, url: str, workdir: Path, **options: Any) -> Callable[[], None]:
    app = service_app(url, workdir, **options)
    method, path, query = CASES[case]
    body = bodies().get(case, b"")
    status = call(app, environ(method, path, query, body))  # records the replies to replay
    assert status[0] == "2", f"{case}: {status}"
    return lambda: call(app, environ(method, path, query, body))


def other_app_step(side: str, case: str, url: str) -> Callable[[], None]:
    """The same-work baseline or the naive app, in process, against the real Redis."""
    prefix = BASELINE_PREFIX if side == "baseline" else NAIVE_PREFIX
    os.environ.update(SESSIONSVC_REDIS_URL=url, SESSIONSVC_KEY_PREFIX=prefix)
    if side == "baseline":
        seed(url, None, 30, key_prefix=prefix)
        from bench.baseline_app import app
    else:
        seed_naive(url, 30)
        from bench.naive_app import app
    method, path, query = CASES[case]
    body = bodies().get(case, b"")
    status = call(app, environ(method, path, query, body))
    assert status[0] == "2", f"{side} {case}: {status}"
    return lambda: call(app, environ(method, path, query, body))


def sample_records(now: int) -> list:
    from sessionsvc.store import Record

    return [Record(number, f"bench_u{number}", "eyJhbGci...xxxx", now + 86400, now, now, number, True, 86400)
            for number in range(1, 21)]


def cipher_step(case: str) -> Callable[[], None]:
    from sessionsvc.crypto import Cipher, generate_key

    cipher = Cipher([generate_key("bench")])
    token = bench_token("cost", 800)
    sealed = cipher.seal(token, "store_001", "bench_user")
    if case in ("get_id", "current"):  # a reveal: open, then the audit line's fingerprint
        return lambda: cipher.fingerprint(cipher.open(sealed, "store_001", "bench_user"))
    if case in ("post", "put"):
        return lambda: cipher.seal(token, "store_001", "bench_user")
    return lambda: None  # validity and list never touch a token


def schemas_step(case: str, url: str, workdir: Path) -> Callable[[], None]:
    from sessionsvc import schemas
    from sessionsvc.vault import Revealed

    app = service_app(url, workdir, replay=True)
    now = int(time.time())
    record = sample_records(now)[0]
    revealed = Revealed(record, bench_token("cost", 800), "0123456789abcdef")
    body = json.loads(bodies().get(case, b"{}"))
    page = {"data": sample_records(now), "pagination": {"page": 1, "limit": 20, "total": 21}}
    dumps = {"get_id": (schemas.TokenDetail(), revealed), "current": (schemas.CurrentToken(), revealed),
             "validity": (schemas.Validity(), record), "list": (schemas.TokenPage(), page),
             "post": (schemas.TokenCreated(), record), "put": (schemas.TokenSummary(), record)}
    loads = {"post": schemas.TokenCreate(), "put": schemas.TokenRefresh()}
    dump_schema, value = dumps[case]
    load_schema = loads.get(case)

    def work() -> None:
        if load_schema is not None:
            load_schema.load(body)
        dump_schema.dump(value)

    context = app.app_context()  # the expiry rule reads the app's configuration
    context.push()
    return work


def gunicorn_logger(log_path: Path) -> Any:
    """gunicorn's logger as `gunicorn.conf.py` sets it up, its lines written to `log_path`."""
    from gunicorn.config import Config as GunicornConfig

    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    config = GunicornConfig()
    for name, value in settings.items():
        if name in config.settings:
            config.set(name, value)
    stderr = sys.stderr
    sys.stderr = open(log_path, "w")  # noqa: SIM115 - the handlers keep it; lives as long as the process
    try:
        logger = config.logger_class(config)
    finally:
        sys.stderr = stderr
    return logger


def access_step(case: str, logger: Any) -> Callable[[], None]:
    """gunicorn's access line for one request of `case`: the environ gunicorn builds (its
    keys, the request's headers as wrk sends them) plus what the app leaves in it."""
    method, path, query = CASES[case]
    body = bodies().get(case, b"")
    headers = [("HOST", "127.0.0.1:8000")]
    if body:
        headers += [("CONTENT-LENGTH", str(len(body))), ("CONTENT-TYPE", "application/json")]
    env = {
        "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "wsgi.file_wrapper": object, "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": "gunicorn", "wsgi.input": io.BytesIO(body), "gunicorn.socket": object(),
        "REQUEST_METHOD": method, "QUERY_STRING": query, "RAW_URI": path + (f"?{query}" if query else ""),
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "51234", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "PATH_INFO": path, "SCRIPT_NAME": "",
        "sessionsvc.request_id": "0123456789abcdef0123456789abcdef",
        "sessionsvc.route": PREFIX + ("/<record_id>" if path.endswith("store_001") else path[len(PREFIX):]),
        "werkzeug.request": object(),
    }
    if body:
        env.update(CONTENT_TYPE="application/json", CONTENT_LENGTH=str(len(body)))
    response = SimpleNamespace(
        status="201 CREATED" if case == "post" else "200 OK", sent=1100,
        headers=[("Content-Type", "application/json"), ("Content-Length", "1100"), ("ETag", '"7"'),
                 ("X-Request-ID", env["sessionsvc.request_id"]), ("X-Content-Type-Options", "nosniff"),
                 ("Referrer-Policy", "no-referrer"), ("Content-Security-Policy", "default-src 'none'"),
                 ("Cache-Control", "no-store"), ("Server", "gunicorn"), ("Date", "Mon, 07 Dec 2026 04:00:00 GMT"),
                 ("Connection", "keep-alive")],
    )
    request = SimpleNamespace(headers=headers)
    elapsed = dt.timedelta(microseconds=830)
    return lambda: logger.access(response, request, env, elapsed)


def step(name: str, case: str, url: str, workdir: Path, logger: Any) -> Callable[[], None]:
    if name == "app":
        return app_step(case, url, workdir, replay=True)
    if name == "app_no_audit":
        return app_step(case, url, workdir, replay=True, audit=False)
    if name == "app_no_metrics":
        return app_step(case, url, workdir, replay=True, metrics=False)
    if name == "app_redis":
        return app_step(case, url, workdir, replay=False)
    if name == "cipher":
        return cipher_step(case)
    if name == "schemas":
        return schemas_step(case, url, workdir)
    if name == "access":
        return access_step(case, logger)
    if name in ("baseline_redis", "naive_redis"):
        return other_app_step(name.split("_")[0], case, url)
    raise ValueError(name)


def run_step(name: str, case: str, count: int | None, repeat: int, number: int) -> None:
    """The child's side: set `name` up, then run it `count` times (under valgrind), or time
    it (CPU time per step, best of `repeat` runs of `number`) and print the µs."""
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="decompose-metrics-"))
    with tempfile.TemporaryDirectory() as directory:
        # As in a gevent worker: logging set up first (gunicorn's master does it, before
        # the fork), then sockets and locks patched, then the app imported and built.
        logger = gunicorn_logger(Path(directory) / "access.log")
        from gevent import monkey

        with warnings.catch_warnings():  # redis is imported already (bench.run): its sockets are patched all the same
            warnings.simplefilter("ignore")
            monkey.patch_all()
        with RedisServer(Path(directory)) as redis_server:
            measure_step(step(name, case, redis_server.url, Path(directory), logger), count, repeat, number)


def measure_step(work: Callable[[], None], count: int | None, repeat: int, number: int) -> None:
    """`work` 20 times, then `count` times (under valgrind), or timed: CPU time per step,
    the best of `repeat` runs of `number`, printed as JSON."""
    for _ in range(20):
        work()
    if count is not None:
        for _ in range(count):
            work()
        return
    best = min(timeit.repeat(work, timer=time.process_time, number=number, repeat=repeat))
    print(json.dumps({"us": best / number * 1e6}))


def in_process(name: str, case: str, counted: bool, repeat: int, number: int) -> float:
    """µs (CPU time) or instructions per step of one in-process part."""
    command = [sys.executable, "-m", "bench.decompose", "--step", name, "--case", case]
    if not counted:
        output = subprocess.run([*command, "--repeat", str(repeat), "--number", str(number)], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        return json.loads(output.splitlines()[-1])["us"]

    def instructions(steps: int) -> int:
        valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
        output = subprocess.run([*valgrind, *command, "--count", str(steps)], cwd=ROOT, capture_output=True, text=True,
                                check=True).stderr
        return int(re.search(r"I\s+refs:\s+([\d,]+)", output).group(1).replace(",", ""))

    low, high = STEPS
    return (instructions(high) - instructions(low)) / (high - low)


# --- the whole worker and Redis --------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time (user and system) of every thread of `pid` so far, in ns (schedstat)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir())


def worker_pid(server: Server) -> int:
    return int(Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()[0])


class Connection:
    """One keep-alive connection, requests sent one after another."""

    def __init__(self, url: str):
        self.connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)

    def send(self, maker: RequestMaker, mode: str, count: int) -> None:
        for _ in range(count):
            method, path, body = maker.make(mode)
            self.connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
            response = self.connection.getresponse()
            response.read()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status}")

    def close(self) -> None:
        self.connection.close()


def commandstats(client: redis.Redis) -> dict[str, dict[str, float]]:
    return {name.removeprefix("cmdstat_"): stats for name, stats in client.info("commandstats").items()}


def one_run(bench: Bench, server: Server, client: redis.Redis, redis_pid: int, case: str, seconds: float) -> dict:
    """One run of `case` against one side: CPU per request of the workers, of Redis (the
    commands, and the rest) and of the load generator, and the commands Redis ran."""
    client.config_resetstat()
    redis_before, driver_before = cpu_ns(redis_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = bench.drive(server, case, seconds)
    redis_ns = cpu_ns(redis_pid) - redis_before
    driver_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, reaped when it ended
    driver_seconds = (driver_after.ru_utime - driver_before.ru_utime
                      + driver_after.ru_stime - driver_before.ru_stime)
    stats = commandstats(client)
    requests = max(1, run["requests"])
    scripts = {name: stats.pop(name) for name in ("evalsha", "eval") if name in stats}
    for name in ("config|resetstat", "info"):
        stats.pop(name, None)
    script_us = sum(entry["usec"] for entry in scripts.values()) / requests
    commands_us = sum(entry["usec"] for entry in stats.values()) / requests
    # Commands run by a script are counted both under EVALSHA and under their own
    # names: EVALSHA's time is the script's, commands outside one ran alone.
    executed = script_us if scripts else commands_us
    redis_us = redis_ns / requests / 1e3
    return {
        "requests": run["requests"],
        "errors": run["errors"],
        "rps": run["rps"],
        "worker_us": run["cpu_seconds"] / requests * 1e6,
        "driver_us": driver_seconds / requests * 1e6,
        "redis_us": redis_us,
        "redis_script_us": script_us,
        "redis_commands_us": executed,
        "redis_rest_us": max(0.0, redis_us - executed),
        "script_calls": sum(entry["calls"] for entry in scripts.values()) / requests,
        "commands": {name: {"calls": entry["calls"] / requests, "us": entry["usec"] / requests}
                     for name, entry in sorted(stats.items(), key=lambda item: -item[1]["usec"])},
    }


def whole_worker(bench: Bench, servers: dict[str, Server], client: redis.Redis, redis_pid: int, cases: list[str],
                 seconds: float, rounds: int) -> dict[str, dict[str, dict]]:
    """Per side and case, under `make bench`'s load (its driver and connections): `rounds`
    runs of `seconds`, the sides in turn, and of each figure the least any run gave. Other
    work on the machine only ever adds to a process's CPU time per request (caches, the
    other hyperthread), so the least of several short runs is the nearest to the cost
    itself; the runs are kept in the report."""
    results: dict[str, dict[str, dict]] = {side: {} for side in servers}
    for case in cases:
        for server in servers.values():
            bench.drive(server, case, 1.0)  # warm-up, and the scripts loaded
        runs: dict[str, list[dict]] = {side: [] for side in servers}
        for _ in range(rounds):
            for side, server in servers.items():
                runs[side].append(one_run(bench, server, client, redis_pid, case, seconds))
        for side, side_runs in runs.items():
            quietest_redis = min(side_runs, key=lambda run: run["redis_us"])
            results[side][case] = {
                **quietest_redis,
                "worker_us": min(run["worker_us"] for run in side_runs),
                "driver_us": min(run["driver_us"] for run in side_runs),
                "runs": [{name: round(run[name], 1) for name in ("rps", "worker_us", "redis_us", "driver_us")}
                         for run in side_runs],
            }
            entry = results[side][case]
            log(f"  {side:8} {case:9} worker {entry['worker_us']:5.0f} us, redis {entry['redis_us']:4.0f} us "
                f"(commands {entry['redis_commands_us']:5.1f}), wrk {entry['driver_us']:4.0f} us")
    return results


@contextlib.contextmanager
def counted_worker(app: str, env: dict[str, str], workdir: Path, config: str) -> Iterator[tuple[Server, int]]:
    """One worker of the production class under callgrind."""
    wrapper = ("valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={workdir}/callgrind.%p")
    with gunicorn(app, env, workdir, "decompose-counted", ("-w", "1", "--timeout", "900"), wrapper,
                  boot_seconds=300, config=config) as server:
        yield server, worker_pid(server)


def callgrind(option: str, pid: int, connection: Connection, workdir: Path) -> None:
    """callgrind_control on the worker; one /healthz wakes the worker to act on it (its
    cost lands in both counts alike)."""
    command = subprocess.Popen(["callgrind_control", option, str(pid)], cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    connection.connection.request("GET", "/healthz")
    connection.connection.getresponse().read()
    command.wait(120)


def whole_worker_instructions(app: str, env: dict[str, str], workdir: Path, cases: list[str], records: int,
                              expires: str, requests: int = 300, config: str = "gunicorn.conf.py") -> dict[str, float]:
    """Per case, the instructions one worker spends per request (after 20 to warm up)."""
    counts = {}
    with counted_worker(app, env, workdir, config) as (server, pid):
        connection = Connection(server.url)
        for case in cases:
            maker = RequestMaker(records, expires, 800, f"counted-{case}")
            connection.send(maker, case, 20)
            callgrind("-z", pid, connection, workdir)
            connection.send(maker, case, requests)
            for old in workdir.glob(f"callgrind.{pid}.*"):
                old.unlink()
            callgrind("-d", pid, connection, workdir)
            dumps = sorted(workdir.glob(f"callgrind.{pid}.*"), key=lambda path: path.stat().st_mtime)
            counts[case] = int(TOTALS.search(dumps[-1].read_text()).group(1)) / requests
            log(f"  {app:22} {case:9} whole worker {counts[case]:,.0f} instructions")
        connection.close()
    return counts


# --- the table -----------------------------------------------------------------------------


# Parts an endpoint does not do at all: counted as nothing (what was measured is noise).
NOT_DONE = {"audit": ("validity", "list", "post", "put"), "cipher": ("validity", "list")}


def decompose(case: str, parts: dict[str, float], whole: float, redis_script: float | None,
              redis_rest: float | None) -> dict[str, float | None]:
    """The rows of one endpoint from its measured parts (µs or instructions)."""
    audit = parts["app"] - parts["app_no_audit"]
    metrics = parts["app"] - parts["app_no_metrics"]
    cipher = parts["cipher"]
    if case in NOT_DONE["audit"]:
        audit = 0.0
    if case in NOT_DONE["cipher"]:
        cipher = 0.0
    return {
        "redis_script": redis_script,
        "redis_rest": redis_rest,
        "client": parts["app_redis"] - parts["app"],
        "cipher": cipher,
        "schemas": parts["schemas"],
        "audit": audit,
        "metrics": metrics,
        "app_rest": parts["app"] - cipher - parts["schemas"] - audit - metrics,
        "access": parts["access"],
        "gunicorn": whole - parts["app_redis"] - parts["access"],
    }


def measure(args: argparse.Namespace) -> dict:
    cases = args.cases.split(",")
    report: dict = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cases": cases,
                    "records": args.records, "seconds": args.seconds, "rounds": args.rounds, "driver": args.driver,
                    "connections": args.connections, "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="decompose-") as directory:
        workdir = Path(directory)
        bench = Bench(argparse.Namespace(driver=args.driver, connections=args.connections, threads=2,
                                         seed=args.records, token_chars=800), workdir)
        with RedisServer(workdir) as redis_server:
            url = redis_server.url
            client = redis.Redis.from_url(url)
            redis_pid = int(client.info("server")["process_id"])
            log(f"seeding {args.records} records per side ...")
            seed(url, bench.key, args.records)
            seed(url, None, args.records, key_prefix=BASELINE_PREFIX)
            seed_naive(url, args.records)
            with gunicorn("wsgi:app", bench.service_env(url), workdir, "service") as service, \
                    gunicorn("bench.baseline_app:app", bench.baseline_env(url), workdir, "baseline") as same, \
                    gunicorn("bench.naive_app:app", bench.naive_env(url), workdir, "naive",
                             config=NAIVE_CONFIG) as naive:
                log("whole workers and Redis under load, CPU time:")
                report["sides"] = whole_worker(bench, {"service": service, "baseline": same, "naive": naive},
                                               client, redis_pid, cases, args.seconds, args.rounds)
            client.close()
        log("parts in process, CPU time:")
        # Passes over every part in turn, the least of each kept: a burst of outside load
        # lands on one pass of a part, not on all of them.
        timings: dict[str, dict[str, list[float]]] = {case: {name: [] for name in IN_PROCESS} for case in cases}
        for _ in range(args.passes):
            for case in cases:
                for name in IN_PROCESS:
                    timings[case][name].append(in_process(name, case, False, args.repeat, args.number))
        report["us"] = {case: {name: min(values) for name, values in by_name.items()}
                        for case, by_name in timings.items()}
        if args.valgrind:
            log("parts in process, instructions:")
            report["instructions"] = {}
            for case in cases:
                report["instructions"][case] = {name: in_process(name, case, True, 0, 0) for name in IN_PROCESS}
                log(f"  {case}: {json.dumps({k: round(v) for k, v in report['instructions'][case].items()})}")
            log("whole worker, instructions:")
            with RedisServer(workdir) as redis_server:
                url = redis_server.url
                seed(url, bench.key, 100)
                seed(url, None, 100, key_prefix=BASELINE_PREFIX)
                seed_naive(url, 100)
                report["whole_instructions"] = whole_worker_instructions("wsgi:app", bench.service_env(url), workdir,
                                                                         cases, 100, bench.expires)
                report["whole_instructions_sides"] = {
                    "baseline": whole_worker_instructions("bench.baseline_app:app", bench.baseline_env(url), workdir,
                                                          cases, 100, bench.expires),
                    "naive": whole_worker_instructions("bench.naive_app:app", bench.naive_env(url), workdir, cases,
                                                       100, bench.expires, config=NAIVE_CONFIG),
                }
    for case in cases:
        side = report["sides"]["service"][case]
        report.setdefault("rows_us", {})[case] = decompose(case, report["us"][case], side["worker_us"],
                                                           side["redis_commands_us"], side["redis_rest_us"])
        if args.valgrind:
            report.setdefault("rows_instructions", {})[case] = decompose(
                case, report["instructions"][case], report["whole_instructions"][case], None, None)
    return report


def markdown(report: dict) -> str:
    cases = report["cases"]
    labels = {"get_id": "GET /<id>", "current": "current", "validity": "validity", "list": "list", "post": "POST",
              "put": "PUT"}
    header = "| part | " + " | ".join(labels[case] for case in cases) + " |"
    rule = "|---|" + "---:|" * len(cases)
    lines = [f"Run {report['date']}, command: `python -m bench.decompose` ({report['records']:,} records per side; "
             f"{report['driver']}, {report['connections']} connections, the least of {report['rounds']} runs of "
             f"{report['seconds']:g} s per endpoint and side; load average before "
             f"{report['load_average_before'][0]:.2f}).", "",
             "µs of CPU time per request (share of the service's whole):", "", header, rule]
    totals = {case: sum(value for value in report["rows_us"][case].values()) for case in cases}
    for key, label in ROWS:
        cells = []
        for case in cases:
            value = report["rows_us"][case][key]
            cells.append("–" if case in NOT_DONE.get(key, ()) else f"{value:.0f} ({value / totals[case]:.0%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **service, whole** (worker + Redis) | " + " | ".join(f"**{totals[case]:.0f}**" for case in cases)
                 + " |")
    for side, name in (("baseline", "same-work baseline"), ("naive", "naive app")):
        cells = [f"{report['sides'][side][case]['worker_us'] + report['sides'][side][case]['redis_us']:.0f}"
                 f" ({report['sides'][side][case]['redis_us']:.0f})" for case in cases]
        lines.append(f"| {name}, whole (of which Redis) | " + " | ".join(cells) + " |")

    def with_driver(side: str, case: str) -> float:
        entry = report["sides"][side][case]
        return entry["worker_us"] + entry["redis_us"] + entry["driver_us"]

    lines.append("| the load generator (wrk), per request | " + " | ".join(
        f"{report['sides']['service'][case]['driver_us']:.0f}" for case in cases) + " |")
    for side, name in (("baseline", "same-work baseline"), ("naive", "naive app")):
        lines.append(f"| CPU per request, {name} ÷ service (wrk included): the ratio to expect | " + " | ".join(
            f"{with_driver(side, case) / with_driver('service', case):.2f}" for case in cases) + " |")
    if "rows_instructions" in report:
        lines += ["", "Instructions per request (user space; the worker's whole under callgrind; Redis not counted):",
                  "", header, rule]
        for key, label in ROWS:
            if key.startswith("redis"):
                continue
            cells = []
            for case in cases:
                value = report["rows_instructions"][case][key]
                cells.append("–" if case in NOT_DONE.get(key, ()) else
                             f"{value:,.0f} ({value / report['whole_instructions'][case]:.0%})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| **worker, whole** | " + " | ".join(f"**{report['whole_instructions'][case]:,.0f}**"
                                                       for case in cases) + " |")
        lines += ["", "The worker by side, instructions per request: the app with its Redis client (in process), "
                  "the access line, gunicorn and WSGI (the rest), and the whole (service ÷ side):", "",
                  "| side | part | " + " | ".join(labels[case] for case in cases) + " |",
                  "|---|---|" + "---:|" * len(cases)]
        for side, name in (("service", "service"), ("baseline", "same-work baseline"), ("naive", "naive app")):
            whole = report["whole_instructions"] if side == "service" else report["whole_instructions_sides"][side]
            app = {case: report["instructions"][case]["app_redis" if side == "service" else f"{side}_redis"]
                   for case in cases}
            access = {case: 0.0 if side == "naive" else report["instructions"][case]["access"] for case in cases}
            rows = (("app and client", app), ("access line", access),
                    ("gunicorn and WSGI", {case: whole[case] - app[case] - access[case] for case in cases}))
            for part, values in rows:
                lines.append(f"| {name} | {part} | " + " | ".join(f"{values[case]:,.0f}" for case in cases) + " |")
            lines.append(f"| {name} | **whole** | " + " | ".join(
                f"**{whole[case]:,.0f}**" + ("" if side == "service" else
                                             f" ({report['whole_instructions'][case] / whole[case]:.2f}×)")
                for case in cases) + " |")
    lines += ["", "Redis per request: the service's script, and the commands it ran (µs, calls):", "",
              "| endpoint | script µs | commands inside, by time: µs (calls) |", "|---|---:|---|"]
    for case in cases:
        side = report["sides"]["service"][case]
        inner = ", ".join(f"{name.upper()} {entry['us']:.1f} ({entry['calls']:.2g})"
                          for name, entry in side["commands"].items() if entry["us"] >= 0.05 or entry["calls"] >= 1)
        lines.append(f"| {labels[case]} | {side['redis_script_us']:.1f} | {inner} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--records", type=int, default=10_000, help="records seeded per side")
    parser.add_argument("--seconds", type=float, default=1.0, help="load per run (CPU time)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per endpoint and side (CPU time): the least counts")
    parser.add_argument("--driver", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3, help="in-process parts: passes over all of them (µs)")
    parser.add_argument("--repeat", type=int, default=20, help="in-process parts: best of this many runs")
    parser.add_argument("--number", type=int, default=200, help="in-process parts: steps per run")
    parser.add_argument("--no-valgrind", dest="valgrind", action="store_false", help="µs only")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, args.case, args.count, args.repeat, args.number)
        return
    report = measure(args)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
