"""Many app instances on one store, and single-server URLs other than redis://."""

from __future__ import annotations

import random
import threading

from conftest import API, TEST_KEYS, future
from journeys import JWT, exercise_every_endpoint
from redis_nodes import RedisNode, need_binaries, nodes_stopped_afterwards
from sessionsvc import create_app
from sessionsvc.config import Config

USERS = ("ann", "ben", "cat")


def real_url(real_redis) -> str:
    options = real_redis.connection_pool.connection_kwargs
    return f"redis://{options['host']}:{options['port']}/0"


def test_three_app_instances_on_one_store_answer_alike_under_concurrent_writes(real_redis):
    apps = [create_app(Config(encryption_keys=TEST_KEYS, redis_url=real_url(real_redis))) for _ in range(3)]
    written: dict[str, str] = {}
    failures: list[object] = []
    lock = threading.Lock()

    def write(worker: int) -> None:
        client = apps[worker % 3].test_client()
        rng = random.Random(worker)
        mine: list[str] = []
        for step in range(12):
            token = f"{JWT}.w{worker}s{step}"
            if mine and rng.random() < 0.4:
                record_id = rng.choice(mine)
                response = client.put(f"{API}/{record_id}", json={"token": token, "expires_at": future()})
            else:
                response = client.post(API, json={"user_id": USERS[step % 3], "token": token, "expires_at": future()})
                record_id = response.json.get("id")
                mine.append(record_id)
            if response.status_code not in (200, 201):
                failures.append(response.json)
            with lock:
                written[record_id] = token

    workers = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures

    clients = [app.test_client() for app in apps]
    listings = [client.get(API, query_string={"limit": 100}).json for client in clients]
    assert listings[0] == listings[1] == listings[2]
    assert listings[0]["pagination"]["total"] == len(written)
    assert sorted(item["id"] for item in listings[0]["data"]) == sorted(written)
    for user in USERS:
        currents = [client.get(f"{API}/current", query_string={"user_id": user}).json for client in clients]
        assert currents[0] == currents[1] == currents[2]
        newest = next(item for item in listings[0]["data"] if item["user_id"] == user)
        assert currents[0]["token"] == written[newest["id"]]
    for index, (record_id, token) in enumerate(sorted(written.items())):
        assert clients[index % 3].get(f"{API}/{record_id}").json["token"] == token


def test_an_id_counter_lost_in_a_failover_never_hands_out_a_held_number(real_redis):
    url = real_url(real_redis)
    first = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url)).test_client()
    held = first.post(API, json={"user_id": "ann", "token": JWT, "expires_at": future()}).json["id"]
    real_redis.delete("{sessionsvc}:ids")  # as if the master died before replicating the counter

    second = create_app(Config(encryption_keys=TEST_KEYS, redis_url=url)).test_client()
    response = second.post(API, json={"user_id": "ben", "token": JWT + "b", "expires_at": future()})
    assert response.status_code == 201
    assert response.json["id"] != held
    assert second.get(f"{API}/{held}").json["token"] == JWT
    assert second.get(f"{API}/{response.json['id']}").json["token"] == JWT + "b"


def test_unix_socket_url_serves_every_endpoint(tmp_path):
    need_binaries("redis-server")
    with nodes_stopped_afterwards() as started:
        node = RedisNode(tmp_path, "unix", unix_socket=True)
        started.append(node)
        assert node.url.startswith("unix://")
        app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=node.url))
        exercise_every_endpoint(app.test_client())
        assert node.client().exists("{sessionsvc}:ids")
