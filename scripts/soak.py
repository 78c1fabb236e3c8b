"""Bounded soak: mixed traffic against two gunicorn workers on a private Redis with AOF,
while that Redis is killed (-9) and restarted once; then checks that nothing acknowledged
was lost, that the indexes are consistent, and that the event stream holds exactly one
event for every acknowledged write (and none for writes that never happened).

    make soak                                    # 180 s, 8 client threads
    .venv/bin/python -m scripts.soak --seconds 60 --threads 4   # from the repository root

Loopback only: it starts its own redis-server and gunicorn on free 127.0.0.1 ports and
stops both (and itself) when the time is up. Exit status 0 only if there was no 500, no
hang, no lost acknowledged write and no index problem.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sessionsvc.crypto import generate_key
from tests.invariants import index_problems
from tests.redis_server import REDIS_SERVER, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

API = "/api/v1/session-storage"
PREFIX = "soak"
REQUEST_TIMEOUT = 5.0


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class Ledger:
    """What the clients were told: per record, the token last acknowledged (None once an
    acknowledged delete), and the states an unanswered or 503'd write may have left; and
    per record the writes acknowledged and those that may or may not have happened, by the
    event each must have written (`created`, `refreshed`, `deleted`)."""

    acknowledged: dict[str, str | None] = field(default_factory=dict)
    uncertain: dict[str, set[str | None]] = field(default_factory=dict)
    unanswered_creates: int = 0
    writes: Counter = field(default_factory=Counter)  # (event type, record id) -> acknowledged
    maybe_writes: Counter = field(default_factory=Counter)  # (event type, record id) -> unknown outcome
    lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, record_id: str, state: str | None, acknowledged: bool) -> None:
        with self.lock:
            if acknowledged:
                self.acknowledged[record_id] = state
                self.uncertain.pop(record_id, None)
            else:
                self.uncertain.setdefault(record_id, set()).add(state)

    def wrote(self, event_type: str, record_id: str, acknowledged: bool) -> None:
        with self.lock:
            (self.writes if acknowledged else self.maybe_writes)[event_type, record_id] += 1


@dataclass
class Stats:
    by_status: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    unavailable_at: list[float] = field(default_factory=list)  # when each 503 answered
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, operation: str, status: int | str, seconds: float) -> None:
        with self.lock:
            self.by_status[status] += 1
            self.by_operation[operation, status] += 1
            self.latencies.append(seconds)
            self.slowest = max(self.slowest, seconds)
            if status == 503:
                self.unavailable_at.append(time.monotonic())


class Client:
    """One keep-alive HTTP connection, renewed every RENEW_AFTER requests so that both
    workers get connections; transport failures come back as a status string."""

    RENEW_AFTER = 100

    def __init__(self, port: int, stats: Stats):
        self.port = port
        self.stats = stats
        self.connection: http.client.HTTPConnection | None = None
        self.used = 0

    def call(self, operation: str, method: str, path: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int | str, dict, dict]:
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **(headers or {})} if payload else dict(headers or {})
        started = time.monotonic()
        for attempt in range(2):
            reused = self.connection is not None
            try:
                status, answer, response_headers = self._send(method, path, payload, all_headers)
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                # A kept-alive connection the server closed meanwhile (a worker recycled after
                # max_requests): like any HTTP client, send again once on a fresh one. Safe
                # here: every write carries an Idempotency-Key or is idempotent in effect.
                self.close()
                status, answer, response_headers = type(error).__name__, {}, {}
                if not reused or attempt:
                    break
            except TimeoutError:
                status, answer, response_headers = "timeout", {}, {}
                self.close()
                break
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as error:
                status, answer, response_headers = type(error).__name__, {}, {}
                self.close()
                break
        self.stats.record(operation, status, time.monotonic() - started)
        return status, answer, response_headers

    def _send(self, method: str, path: str, payload: bytes | None, headers: dict) -> tuple[int, dict, dict]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            self.used = 0
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        self.used += 1
        if response.getheader("Connection", "").lower() == "close" or self.used >= self.RENEW_AFTER:
            self.close()
        return response.status, json.loads(data) if data else {}, dict(response.getheaders())

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def traffic(worker: int, port: int, stop: threading.Event, ledger: Ledger, stats: Stats) -> None:
    """One client's mixed traffic; each worker owns its users, so its ledger is exact."""
    client = Client(port, stats)
    mine: list[str] = []
    etags: dict[str, str] = {}
    rng = random.Random(worker)
    for step in itertools.count():
        if stop.is_set():
            client.close()
            return
        user = f"soak{worker}-{step % 5}"
        token = f"tok-{worker}-{step}-{uuid.uuid4().hex}"
        roll = rng.random()
        if roll < 0.25 or not mine:
            key = uuid.uuid4().hex
            body = {"user_id": user, "token": token, "expires_at": iso(time.time() + 3600)}
            status, answer, headers = client.call("POST", "POST", API, body, {"Idempotency-Key": key})
            if status != 201:  # retried once with the same key: safe, and it must not duplicate
                status, answer, headers = client.call("POST retry", "POST", API, body, {"Idempotency-Key": key})
            if status == 201:
                mine.append(answer["id"])
                etags[answer["id"]] = headers.get("ETag", "")
                ledger.settle(answer["id"], token, acknowledged=True)
                ledger.wrote("created", answer["id"], acknowledged=True)
            else:
                with ledger.lock:
                    ledger.unanswered_creates += 1
        elif roll < 0.45:
            record_id = rng.choice(mine)
            status, answer, headers = client.call("GET", "GET", f"{API}/{record_id}")
            if status == 200:
                etags[record_id] = headers.get("ETag", "")
        elif roll < 0.60:
            record_id = rng.choice(mine)
            body = {"token": token, "expires_at": iso(time.time() + 3600)}
            conditional = {"If-Match": etags[record_id]} if etags.get(record_id) and rng.random() < 0.5 else {}
            status, answer, headers = client.call("PUT", "PUT", f"{API}/{record_id}", body, conditional)
            if status == 200:
                etags[record_id] = headers.get("ETag", "")
                ledger.settle(record_id, token, acknowledged=True)
                ledger.wrote("refreshed", record_id, acknowledged=True)
            elif status not in (404, 412):
                ledger.settle(record_id, token, acknowledged=False)
                ledger.wrote("refreshed", record_id, acknowledged=False)
        elif roll < 0.70:
            client.call("list", "GET", f"{API}?user_id={user}&limit=10")
        elif roll < 0.78:
            client.call("current", "GET", f"{API}/current?user_id={user}")
        elif roll < 0.86:
            client.call("validity", "GET", f"{API}/validity?user_id={user}")
        elif roll < 0.88:
            client.call("list all", "GET", f"{API}?page=2&limit=50")
        else:
            record_id = mine.pop(rng.randrange(len(mine)))
            status, _, _ = client.call("DELETE", "DELETE", f"{API}/{record_id}")
            if status in (200, 404):
                ledger.settle(record_id, None, acknowledged=True)
            else:
                ledger.settle(record_id, None, acknowledged=False)
            # A 404 may follow a first attempt that deleted it (sent again on a reset connection).
            ledger.wrote("deleted", record_id, acknowledged=status == 200)


def wait_for_http(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become ready")


def event_problems(raw, ledger: Ledger) -> dict:
    """The event stream against the ledger: every acknowledged write has exactly one event
    (`created` once per record, `refreshed` once per acknowledged PUT, `deleted` once), a
    write of unknown outcome at most one, and there is no event of any other write."""
    events: Counter = Counter()
    start = "-"
    while batch := raw.xrange(f"{{{PREFIX}}}:events", min=start, count=10000):
        for _, fields in batch:
            record = f"store_{int(fields[b'n']):03d}" if b"n" in fields else None
            events[fields[b"type"].decode(), record] += 1
        start = "(" + batch[-1][0].decode()
    info = raw.xinfo_stream(f"{{{PREFIX}}}:events")
    problems = []
    for key in set(ledger.writes) | set(ledger.maybe_writes) | set(events):
        told, acknowledged, maybe = events[key], ledger.writes[key], ledger.maybe_writes[key]
        if key[0] == "created":
            acknowledged, maybe = min(acknowledged, 1), 0  # a replayed POST answers the same record
        if key[0] == "created" and not ledger.writes[key]:
            maybe = 1  # a create whose answer was lost (counted below)
        if not acknowledged <= told <= acknowledged + maybe:
            problems.append(f"{key}: {told} events for {acknowledged} acknowledged and {maybe} uncertain writes")
    unanswered = sum(1 for kind, record in events if kind == "created" and not ledger.writes[kind, record])
    if unanswered > ledger.unanswered_creates:
        problems.append(f"{unanswered} records created that no answered POST explains")
    return {
        "events": sum(events.values()),
        "events_by_type": dict(Counter(kind for kind, _ in events.elements())),
        "events_trimmed": info["entries-added"] - info["length"],
        "acknowledged_writes": sum(ledger.writes.values()),
        "event_problems": problems[:20],
    }


def verify(port: int, ledger: Ledger, server: RedisServer) -> dict:
    client = Client(port, Stats())
    lost, wrong = [], []
    for record_id, token in sorted(ledger.acknowledged.items()):
        status, answer, _ = client.call("verify", "GET", f"{API}/{record_id}")
        held = answer.get("token") if status == 200 else None
        if status not in (200, 404):
            wrong.append((record_id, status))
        elif held != token and held not in ledger.uncertain.get(record_id, ()):
            (lost if token is not None else wrong).append((record_id, "held" if held else "missing"))
    raw = server.client()
    problems = index_problems(raw, PREFIX)
    live_acknowledged = sum(1 for token in ledger.acknowledged.values() if token is not None)
    status, answer, _ = client.call("verify", "GET", f"{API}?limit=1")
    total = answer.get("pagination", {}).get("total") if status == 200 else None
    client.close()
    uncertain = len(ledger.uncertain)
    count_consistent = total is not None and (
        live_acknowledged - uncertain <= total <= live_acknowledged + uncertain + ledger.unanswered_creates
    )
    return {
        "acknowledged_records": len(ledger.acknowledged),
        "acknowledged_live": live_acknowledged,
        "uncertain_records": len(ledger.uncertain),
        "unanswered_creates": ledger.unanswered_creates,
        "listed_total": total,
        "listed_total_consistent": count_consistent,
        "lost_acknowledged_writes": lost,
        "wrong_answers": wrong,
        "index_problems": problems,
        **event_problems(raw, ledger),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the traffic runs (default 180)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds Redis stays down (default 2)")
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    options = parser.parse_args()
    if REDIS_SERVER is None:
        print("soak: needs redis-server (on PATH, /usr/bin or /usr/local/bin)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="sessionsvc-soak-"))
    server = RedisServer(workdir / "redis", "--appendonly", "yes", "--appendfsync", options.appendfsync).start()
    port = free_port()
    environment = {
        **os.environ,
        "SESSIONSVC_REDIS_URL": server.url,
        "SESSIONSVC_ENCRYPTION_KEYS": generate_key("soak"),
        "SESSIONSVC_KEY_PREFIX": PREFIX,
        "SESSIONSVC_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "SESSIONSVC_ACCESS_LOG": "/dev/null",
        "SESSIONSVC_LOG_LEVEL": "error",
        "SESSIONSVC_EVENTS_MAXLEN": "10000000",  # every event kept, to be checked at the end
    }
    with open(workdir / "gunicorn.log", "w") as log:
        gunicorn = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    ledger, stats, stop = Ledger(), Stats(), threading.Event()
    report: dict = {}
    try:
        wait_for_http(port, time.monotonic() + 30)
        workers = [
            threading.Thread(target=traffic, args=(i, port, stop, ledger, stats)) for i in range(options.threads)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        time.sleep(options.seconds / 2)
        killed_at = time.monotonic() - started
        server.kill()
        time.sleep(options.outage)
        server.start()
        restarted_at = time.monotonic() - started
        wait_for_http(port, time.monotonic() + 30)  # /readyz: both workers' Redis is back
        recovered = time.monotonic()
        time.sleep(max(0.0, options.seconds - (time.monotonic() - started)))
        stop.set()
        for worker in workers:
            worker.join(timeout=REQUEST_TIMEOUT * 3)
        elapsed = time.monotonic() - started
        hung_threads = sum(worker.is_alive() for worker in workers)
        latencies = sorted(stats.latencies)
        report = {
            "seconds": round(elapsed, 1),
            "threads": options.threads,
            "gunicorn_workers": 2,
            "appendfsync": options.appendfsync,
            "redis_killed_at_s": round(killed_at, 1),
            "redis_restarted_at_s": round(restarted_at, 1),
            "ready_again_at_s": round(recovered - started, 1),
            "503_outside_outage": sum(
                1 for moment in stats.unavailable_at
                if moment < started + killed_at or moment > recovered + REQUEST_TIMEOUT
            ),
            "requests": len(latencies),
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "by_status": {str(status): count for status, count in sorted(stats.by_status.items(), key=str)},
            "errors_by_operation": {
                f"{op} {status}": count
                for (op, status), count in sorted(stats.by_operation.items(), key=str)
                if status not in (200, 201, 404, 412)
            },
            "latency_ms": {
                "p50": round(statistics.median(latencies) * 1000, 1),
                "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
                "max": round(stats.slowest * 1000, 1),
            },
            "hung_threads": hung_threads,
            "after": verify(port, ledger, server),
        }
    finally:
        stop.set()
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
        server.kill()
    print(json.dumps(report, indent=2))
    after = report["after"]
    failed = (
        any(str(status).startswith("5") and status != 503 for status in stats.by_status)
        or any(not isinstance(status, int) for status in stats.by_status)
        or report["hung_threads"]
        or after["lost_acknowledged_writes"] or after["wrong_answers"] or after["index_problems"]
        or after["event_problems"] or after["events_trimmed"]
        or not after["listed_total_consistent"]
    )
    print("soak:", "FAILED" if failed else "passed", f"(logs in {workdir})")
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
