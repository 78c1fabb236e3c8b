"""Faults on private redis-servers the tests own: stopped, killed, paused, stalled, slowed,
loading, restarted. Through the app over HTTP (the test client, with the app's real Redis
client built from SESSIONSVC_REDIS_URL settings): every call answers within 3 s with a real
answer or 503 + Retry-After, never a 500 or a hang; /healthz stays up; the service recovers
by itself; and with appendfsync always, nothing acknowledged is lost across a kill -9."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Self

import pytest
import redis

from conftest import API, JWT, NO_REDIS_REASON, REDIS_SERVER, TEST_KEYS, future
from invariants import index_problems
from redis_server import LatencyProxy, RedisServer, wait_until
from sessionsvc import create_app
from sessionsvc.config import Config

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS_REASON)

BOUND_SECONDS = 3.0


@pytest.fixture
def servers(tmp_path):
    """Start private redis-servers; all are killed when the test ends."""
    started: list[RedisServer] = []

    def start(*options: str, wait: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", *options)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.kill()


def app_on(url: str, **overrides):
    return create_app(Config(encryption_keys=TEST_KEYS, redis_url=url, **overrides))


@dataclass
class Answer:
    operation: str
    status: int
    seconds: float
    at: float
    body: dict | None
    retry_after: str | None


@dataclass
class Load:
    """Mixed traffic from a few threads until stopped; keeps every answer."""

    app: object
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, args=(i,)) for i in range(self.threads)]

    def __enter__(self) -> Self:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        assert not any(worker.is_alive() for worker in self._workers), "a request hung"

    def _call(self, client, operation: str, method: str, url: str, **kwargs):
        started = time.monotonic()
        response = getattr(client, method)(url, **kwargs)
        self.answers.append(Answer(
            operation, response.status_code, time.monotonic() - started, started,
            response.get_json(silent=True), response.headers.get("Retry-After"),
        ))
        return response

    def _run(self, worker: int) -> None:
        client = self.app.test_client()
        last_id = "store_001"
        for step in itertools.count():
            if self._stop.is_set():
                return
            user = f"user{worker}-{step % 3}"
            created = self._call(client, "POST", "post", API,
                                 json={"user_id": user, "token": f"{JWT}{step}", "expires_at": future()})
            if created.status_code == 201:
                last_id = created.json["id"]
            self._call(client, "GET id", "get", f"{API}/{last_id}")
            body = {"token": f"{JWT}x{step}", "expires_at": future()}
            self._call(client, "PUT", "put", f"{API}/{last_id}", json=body)
            self._call(client, "list", "get", API, query_string={"user_id": user})
            self._call(client, "current", "get", f"{API}/current")
            self._call(client, "validity", "get", f"{API}/validity")
            if step % 4 == 3:
                self._call(client, "DELETE", "delete", f"{API}/{last_id}")

    def between(self, start: float, end: float) -> list[Answer]:
        return [answer for answer in self.answers if start <= answer.at and answer.at + answer.seconds <= end]


def assert_answered_honestly(answers: list[Answer]) -> None:
    """Every answer bounded in time, a real answer or an honest 503."""
    assert answers
    slow = [(a.operation, a.status, round(a.seconds, 2)) for a in answers if a.seconds >= BOUND_SECONDS]
    assert not slow, f"answers slower than {BOUND_SECONDS} s: {slow[:5]}"
    statuses = {a.status for a in answers}
    assert statuses <= {200, 201, 404, 503}, statuses
    for answer in answers:
        if answer.status == 503:
            assert answer.retry_after == "1" and answer.body["code"] == 503 and answer.body["message"]


def create(client, **headers):
    return client.post(API, json={"user_id": "alice", "token": JWT, "expires_at": future()}, headers=headers)


@pytest.mark.parametrize("fault", ["stop", "kill"])
def test_redis_going_down_mid_load_gives_quick_503s_and_recovers_on_restart(servers, fault):
    server = servers()
    app = app_on(server.url)
    client = app.test_client()
    with Load(app) as load:
        time.sleep(0.8)
        getattr(server, fault)()
        down = time.monotonic()
        time.sleep(1.2)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        restarting = time.monotonic()
        server.start()
        up = time.monotonic()
        time.sleep(0.8)
    assert_answered_honestly(load.answers)
    during = load.between(down + 0.1, restarting)
    assert during and {a.status for a in during} == {503}
    assert {a.status for a in load.between(up + 0.3, time.monotonic())} <= {200, 201, 404}
    # The very first request after Redis is back succeeds: no restart of the app, no warm-up.
    server.kill()
    server.start()
    assert create(client).status_code == 201
    # Readiness reuses its last check (the 503 above) for ops.READINESS_SECONDS at most.
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=5, what="readiness to return")


def test_an_unreachable_redis_at_start_is_503_until_it_appears(servers, tmp_path):
    server = RedisServer(tmp_path / "late")
    client = app_on(server.url).test_client()
    started = time.monotonic()
    assert create(client).status_code == 503
    assert client.get(API).status_code == 503
    assert time.monotonic() - started < 2 * BOUND_SECONDS
    assert client.get("/healthz").status_code == 200
    server.start()
    try:
        assert create(client).status_code == 201
    finally:
        server.kill()


def test_paused_writes_give_bounded_answers_and_an_idempotent_retry_creates_once(servers):
    server = servers()
    app = app_on(server.url)
    client = app.test_client()
    assert create(client).status_code == 201
    server.client().execute_command("CLIENT", "PAUSE", "2500", "WRITE")
    paused = time.monotonic()
    with Load(app, threads=2) as load:
        started = time.monotonic()
        refused = create(client, **{"Idempotency-Key": "during-pause"})
        assert refused.status_code == 503 and time.monotonic() - started < BOUND_SECONDS
        time.sleep(max(0.0, paused + 2.7 - time.monotonic()))
    assert_answered_honestly(load.answers)
    assert any(a.status == 503 for a in load.answers)
    retried = create(client, **{"Idempotency-Key": "during-pause"})
    assert retried.status_code == 201
    assert create(client, **{"Idempotency-Key": "during-pause"}).json == retried.json
    assert client.get(API, query_string={"user_id": "alice"}).json["pagination"]["total"] == 2  # warm-up + once


def test_a_stalled_redis_gives_503_within_the_timeout_then_serves_again(servers):
    server = servers()
    app = app_on(server.url)
    client = app.test_client()
    assert create(client).status_code == 201
    sleeper = threading.Thread(target=lambda: server.client(socket_timeout=10).execute_command("DEBUG", "SLEEP", "2"))
    with Load(app, threads=3) as load:
        time.sleep(0.2)
        sleeper.start()
        sleeper.join()
        time.sleep(0.5)
    assert_answered_honestly(load.answers)
    assert 503 in {a.status for a in load.answers}
    assert create(client).status_code == 201


@pytest.mark.parametrize("delay, expected", [(0.05, {200, 201, 404}), (1.5, {503})])
def test_a_slow_network_to_redis_gives_bounded_answers(servers, delay, expected):
    server = servers()
    proxy = LatencyProxy(server.port, delay)
    try:
        app = app_on(proxy.url)
        with Load(app, threads=2) as load:
            time.sleep(1.2)
    finally:
        proxy.close()
    assert_answered_honestly(load.answers)
    assert {a.status for a in load.answers} <= expected


def test_redis_loading_its_dataset_is_503_until_loaded(servers):
    server = servers()
    filler = server.client()
    filler.execute_command("DEBUG", "POPULATE", "60000", "filler")
    filler.save()
    server.kill()
    server.options += ("--key-load-delay", "20", "--loading-process-events-interval-bytes", "1024")
    server.start(wait=False)
    client = app_on(server.url).test_client()
    deadline = time.monotonic() + 5
    while not server.loading():
        assert time.monotonic() < deadline, "redis-server never reported LOADING"
        time.sleep(0.01)
    loading_answers = []
    while server.loading():
        started = time.monotonic()
        response = client.get(API)
        elapsed = time.monotonic() - started
        ready = client.get("/readyz")
        if not server.loading():
            break  # loading may have ended during these requests: only bracketed ones count
        loading_answers.append((response.status_code, elapsed, response.headers.get("Retry-After")))
        assert ready.status_code == 503 and ready.json["redis"] == "loading"
    assert loading_answers, "loading finished before a request could be made"
    assert {status for status, _, _ in loading_answers} == {503}
    assert all(elapsed < BOUND_SECONDS and retry == "1" for _, elapsed, retry in loading_answers)
    server.wait_ready()
    assert create(client).status_code == 201


def test_appendfsync_always_keeps_every_acknowledged_write_across_kill_9(servers):
    server = servers("--appendonly", "yes", "--appendfsync", "always")
    app = app_on(server.url)
    acknowledged: dict[str, str | None] = {}  # id -> token last acknowledged (None: deleted)
    pending: dict[str, set[str | None]] = {}  # id -> states a write in flight may have left
    unacknowledged_creates = 0
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        nonlocal unacknowledged_creates
        client = app.test_client()
        mine: list[str] = []
        for step in itertools.count():
            if stop.is_set():
                return
            token = f"{JWT}-{worker}-{step}"
            if step % 5 == 4 and mine:
                record_id = mine.pop(0)
                response = client.delete(f"{API}/{record_id}")
                new_state = None
            elif step % 3 == 2 and mine:
                record_id = mine[-1]
                response = client.put(f"{API}/{record_id}", json={"token": token, "expires_at": future()})
                new_state = token
            else:
                response = client.post(API, json={"user_id": f"w{worker}", "token": token, "expires_at": future()})
                if response.status_code != 201:
                    with lock:
                        unacknowledged_creates += 1
                    continue
                record_id, new_state = response.json["id"], token
                mine.append(record_id)
            with lock:
                if response.status_code in (200, 201):
                    acknowledged[record_id] = new_state
                    pending.pop(record_id, None)
                else:
                    pending.setdefault(record_id, set()).add(new_state)

    workers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    server.kill()
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    assert len(acknowledged) > 20

    server.start()
    raw = server.client()
    assert index_problems(raw) == []
    reader = app_on(server.url).test_client()
    for record_id, token in acknowledged.items():
        response = reader.get(f"{API}/{record_id}")
        held = response.json["token"] if response.status_code == 200 else None
        assert response.status_code in (200, 404)
        assert held == token or held in pending.get(record_id, ()), record_id
    live = sum(1 for token in acknowledged.values() if token is not None)
    total = reader.get(API, query_string={"limit": 100}).json["pagination"]["total"]
    assert live - len(pending) <= total <= live + len(pending) + unacknowledged_creates


def test_an_exhausted_connection_pool_is_503_at_once(servers):
    server = servers()
    app = app_on(server.url, redis_max_connections=2)
    client = app.test_client()
    assert create(client).status_code == 201
    pool = app.extensions["sessionsvc"].store.client.connection_pool
    held = [pool.get_connection(), pool.get_connection()]
    started = time.monotonic()
    for response in (create(client), client.get(API), client.get(f"{API}/current")):
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert time.monotonic() - started < BOUND_SECONDS
    for connection in held:
        pool.release(connection)
    assert create(client).status_code == 201


def test_a_redis_out_of_memory_refuses_with_503_not_500(servers):
    server = servers("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    client = app_on(server.url).test_client()
    assert create(client).status_code == 201
    filler = server.client()
    for size in (100_000, 1_000, 10):  # fill until not even a small write fits
        for batch in range(10_000):
            try:
                filler.set(f"filler:{size}:{batch}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
    response = create(client)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert client.get(API).status_code in (200, 503)
    filler.flushall()
    assert create(client).status_code == 201


def test_a_script_running_too_long_is_503_busy_until_it_is_killed(servers):
    server = servers("--busy-reply-threshold", "50")
    client = app_on(server.url).test_client()
    assert create(client).status_code == 201
    spinner = threading.Thread(target=spin_until_killed, args=(server.client(socket_timeout=10),))
    spinner.start()
    time.sleep(0.3)
    try:
        for response in (client.get(API), create(client)):
            assert response.status_code == 503
    finally:
        server.client().script_kill()
        spinner.join()
    assert create(client).status_code == 201


def spin_until_killed(client) -> None:
    with contextlib.suppress(redis.exceptions.ResponseError):  # what SCRIPT KILL answers its caller
        client.eval("while true do end", 0)


@pytest.mark.parametrize("reply, kind", [
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "masterdown"),
    ("TRYAGAIN Multiple keys request during rehashing of slot", "tryagain"),
    ("CLUSTERDOWN The cluster is down", "clusterdown"),
    ("READONLY You can't write against a read only replica.", "read_only"),
    ("OOM command not allowed when used memory > 'maxmemory'.", "oom"),
    ("NOREPLICAS Not enough good replicas to write.", "noreplicas"),
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist", "misconf"),
    ("ERR wrong number of arguments for 'hset' command", None),
])
def test_redis_replies_meaning_not_now_are_classified_unavailable(reply, kind):
    """Replies a failover, a resharding or a full disk produce, parsed as redis-py parses them."""
    from redis._parsers.base import BaseParser

    from sessionsvc.store.client import unavailable_kind as _unavailable_kind

    assert _unavailable_kind(BaseParser.parse_error(reply)) == kind


def test_creates_waiting_for_new_ids_on_a_stalled_redis_do_not_queue_behind_each_other(servers):
    server = servers()
    app = app_on(server.url)  # fresh: its first create must reserve a block of ids
    sleeper = threading.Thread(target=lambda: server.client(socket_timeout=10).execute_command("DEBUG", "SLEEP", "4"))
    sleeper.start()
    time.sleep(0.2)
    answers = []

    def post() -> None:
        started = time.monotonic()
        status = create(app.test_client()).status_code
        answers.append((status, time.monotonic() - started))

    posters = [threading.Thread(target=post) for _ in range(6)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    sleeper.join()
    assert len(answers) == 6
    assert all(status == 503 and seconds < BOUND_SECONDS for status, seconds in answers), answers
