"""What the app itself costs per request, service against baseline, with Redis taken out.

Both apps are called in process through WSGI (no gunicorn, no sockets). Each Lua script
runs once against a private redis-server and its reply is then replayed, so what is
measured is Python alone: routing, validation, encryption, logging, metrics, rendering.

    python -m bench.app_cost                   # time per request (best of several repeats)
    python -m bench.app_cost --instructions    # instructions per request, under valgrind

Timings move with the machine; instruction counts (valgrind's cachegrind, the difference
between runs of 100 and 400 requests, over 300) barely move from run to run, so a change
too small for the timings to show still shows in them (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import redis

from bench.run import BASELINE_PREFIX, PREFIX, SERVICE_PREFIX, bench_token, iso
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

CASES = {  # name: (method, path, query)
    "get_id": ("GET", f"{PREFIX}/store_001", ""),
    "current": ("GET", f"{PREFIX}/current", ""),
    "validity": ("GET", f"{PREFIX}/validity", ""),
    "list": ("GET", PREFIX, "page=1&limit=20"),
    "post": ("POST", PREFIX, ""),
    "put": ("PUT", f"{PREFIX}/store_001", ""),
}


class Replaying:
    """A redis-py client that, once `replay()` is called, answers each script and INCRBY
    with the first reply Redis gives it from then on (what is timed is Python alone);
    everything else goes to Redis as it is."""

    def __init__(self, client: Any):
        self.client = client
        self.replaying = False
        self.incrby = Replayed(client.incrby, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def register_script(self, script: str) -> Replayed:
        return self.wrap(self.client.register_script(script))

    def wrap(self, script: Any) -> Replayed:
        return Replayed(script, self)

    def replay(self) -> None:
        self.replaying = True


class Replayed:
    """A script (or command) that asks Redis until its client replays, then once more,
    and from then on answers with that reply."""

    def __init__(self, command: Any, source: Replaying):
        self.command = command
        self.source = source
        self.sha = getattr(command, "sha", None)
        self.script = getattr(command, "script", None)
        self.reply: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.reply is None:
            reply = self.command(*args, **kwargs)
            if not self.source.replaying:
                return reply
            self.reply = reply
        return self.reply


def environ(method: str, path: str, query: str, body: bytes) -> dict:
    return {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "CONTENT_TYPE": "application/json" if body else "", "CONTENT_LENGTH": str(len(body)) if body else "",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "app_cost",
    }


def call(app: Any, env: dict) -> str:
    statuses: list[str] = []
    chunks = app(env, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return statuses[0]


def build_apps(url: str, log_path: Path) -> tuple[Any, Replaying, Any, Replaying]:
    """The service as `make run` builds it (INFO logs, JSON lines, metrics) and the
    baseline, each with its Redis client replaying (see Replaying)."""
    from sessionsvc import create_app
    from sessionsvc.crypto import generate_key

    service_redis = Replaying(redis.Redis.from_url(url))
    service = create_app({
        "SESSIONSVC_REDIS_URL": url, "SESSIONSVC_ENCRYPTION_KEYS": generate_key("bench"),
        "SESSIONSVC_ENV": "development", "SESSIONSVC_KEY_PREFIX": SERVICE_PREFIX, "SESSIONSVC_LOG_FORMAT": "json",
    }, redis_client=service_redis)
    log_file = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger("sessionsvc").handlers:
        handler.setStream(log_file)
    os.environ.update(SESSIONSVC_REDIS_URL=url, SESSIONSVC_KEY_PREFIX=BASELINE_PREFIX)
    from bench import baseline_app

    baseline_redis = baseline_app.client = Replaying(baseline_app.client)
    baseline_app.scripts = {name: baseline_redis.wrap(script) for name, script in baseline_app.scripts.items()}
    return service, service_redis, baseline_app.app, baseline_redis


def prepare(url: str, workdir: Path) -> tuple[dict, dict]:
    """Both apps, with every script and id reservation replaying a recorded reply;
    request bodies per case."""
    service, service_redis, baseline, baseline_redis = build_apps(url, workdir / "app.log")
    token = bench_token("cost", 800)
    expires = iso(time.time() + 86400)
    create = json.dumps({"user_id": "bench_user", "token": token, "expires_at": expires}).encode()
    refresh = json.dumps({"token": token, "expires_at": expires}).encode()
    bodies = {"post": create, "put": refresh}
    apps = {"service": service, "baseline": baseline}
    for app in apps.values():
        for _ in range(21):  # a full list page (limit 20)
            assert call(app, environ("POST", PREFIX, "", create)).startswith("201")
    service_redis.replay()
    baseline_redis.replay()
    for name, (method, path, query) in CASES.items():  # each records its reply
        for side, app in apps.items():
            status = call(app, environ(method, path, query, bodies.get(name, b"")))
            assert status[0] == "2", f"{side} {name}: {status}"
    return apps, bodies


def timed(apps: dict, bodies: dict, cases: list[str], number: int, repeat: int) -> None:
    print(f"{'endpoint':10} {'service µs':>11} {'baseline µs':>12} {'extra':>7}")
    for name in cases:
        method, path, query = CASES[name]
        body = bodies.get(name, b"")
        best = {}
        for side, app in apps.items():
            request = (method, path, query, body)
            runs = timeit.repeat(lambda app=app, request=request: call(app, environ(*request)),
                                 number=number, repeat=repeat)
            best[side] = min(runs) / number * 1e6
        print(f"{name:10} {best['service']:11.1f} {best['baseline']:12.1f} {best['service'] - best['baseline']:7.1f}")


def instructions(cases: list[str]) -> None:
    """Each case and side under valgrind twice (100 and 400 requests): instructions per request."""
    def count(name: str, side: str, requests: int) -> int:
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                   sys.executable, "-m", "bench.app_cost", "--only", name, "--side", side, "--count", str(requests)]
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stderr
        return int(re.search(r"I\s+refs:\s+([\d,]+)", output).group(1).replace(",", ""))

    print(f"{'endpoint':10} {'service':>10} {'baseline':>10} {'ratio':>6}   (instructions per request)")
    for name in cases:
        per_request = {side: (count(name, side, 400) - count(name, side, 100)) // 300
                       for side in ("service", "baseline")}
        print(f"{name:10} {per_request['service']:10,} {per_request['baseline']:10,} "
              f"{per_request['service'] / per_request['baseline']:6.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--number", type=int, default=2000, help="requests per timed repeat")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.instructions:
        instructions(cases)
        return
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="app-cost-metrics-"))
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as redis_server:
        apps, bodies = prepare(redis_server.url, Path(directory))
        if args.only:  # one side, one case, `--count` times: what --instructions measures
            method, path, query = CASES[args.only]
            for _ in range(args.count):
                call(apps[args.side], environ(method, path, query, bodies.get(args.only, b"")))
            return
        timed(apps, bodies, cases, args.number, args.repeat)


if __name__ == "__main__":
    main()
