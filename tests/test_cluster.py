"""Redis Cluster: a 3-master cluster created by the test; every endpoint works, the store's
slot can move to another master while requests run, and stores spread over masters."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import API, TEST_KEYS, future
from journeys import JWT, exercise_every_endpoint
from redis_nodes import Cluster, need_binaries, nodes_stopped_afterwards
from sessionsvc import create_app
from sessionsvc.config import Config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_binaries("redis-server", "redis-cli")
    with nodes_stopped_afterwards() as started:
        yield Cluster(tmp_path_factory.mktemp("cluster"), started)


def cluster_app(cluster: Cluster, prefix: str, **overrides):
    config = Config(encryption_keys=TEST_KEYS, redis_url=cluster.url, redis_cluster=True, key_prefix=prefix,
                    **overrides)
    return create_app(config)


def test_every_endpoint_works_on_a_cluster(cluster):
    exercise_every_endpoint(cluster_app(cluster, "e2e").test_client())


def test_failed_authentications_are_counted_in_the_cluster_for_every_instance(cluster):
    key = "k-cluster-test-key-0123456789abcdef"
    first, second = (cluster_app(cluster, "authfail", api_keys=(key,), auth_failures="2 per minute").test_client()
                     for _ in range(2))
    assert [client.get(API, headers={"Authorization": "Bearer guess"}).status_code for client in (first, second)] == [
        401, 401]
    assert second.get(API, headers={"Authorization": f"Bearer {key}"}).status_code == 429
    counters = [name for node in cluster.nodes for name in node.client().keys("authfail:authfail:*")]
    assert len(counters) == 1


def test_stores_with_different_prefixes_land_on_different_masters(cluster):
    by_master: dict[int, str] = {}
    for index in range(200):
        prefix = f"tenant{index}"
        master = cluster.owner(cluster.slot_of("{" + prefix + "}:gen"))
        by_master.setdefault(master.port, prefix)
        if len(by_master) == len(cluster.nodes):
            break
    assert len(by_master) == len(cluster.nodes)
    for port, prefix in by_master.items():
        client = cluster_app(cluster, prefix).test_client()
        assert client.post(API, json={"user_id": "u", "token": JWT, "expires_at": future()}).status_code == 201
        node = next(node for node in cluster.nodes if node.port == port)
        slot = cluster.slot_of("{" + prefix + "}:gen")
        assert node.client().cluster("countkeysinslot", slot) >= 4  # record, 3 indexes, counters


def test_store_keeps_answering_while_its_slot_migrates_to_another_master(cluster):
    prefix = "migrating"
    app = cluster_app(cluster, prefix)
    client = app.test_client()
    saved = [client.post(API, json={"user_id": f"u{index % 5}", "token": JWT, "expires_at": future()}).json["id"]
             for index in range(30)]
    slot = cluster.slot_of("{" + prefix + "}:gen")
    source = cluster.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)

    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def keep_requesting() -> None:
        other = app.test_client()
        while not stop.is_set():
            for method, path, body in (
                ("get", f"{API}/validity", None),
                ("get", API, None),
                ("post", API, {"user_id": "bg", "token": JWT, "expires_at": future()}),
            ):
                started = time.monotonic()
                response = getattr(other, method)(path, json=body)
                answers.append((response.status_code, time.monotonic() - started))

    background = threading.Thread(target=keep_requesting)
    background.start()
    try:
        with cluster.slot_moving(slot, target, pause_after=3):
            # Half the store is on each master: the scripts are refused (TRYAGAIN) rather than run
            # on a partial store, so the answer is a clean 503, never a wrong 404 or a 500.
            half_way = client.get(f"{API}/{saved[0]}")
            assert half_way.status_code == 503
            assert half_way.headers["Retry-After"]
            assert client.get(API).status_code == 503
        time.sleep(0.3)
    finally:
        stop.set()
        background.join(30)

    assert cluster.owner(slot) is target
    # The app's slot map still names the old master: MOVED is followed, nothing restarts.
    for record_id in saved:
        assert client.get(f"{API}/{record_id}").status_code == 200
    listing = client.get(API, query_string={"limit": 100}).json
    created_in_background = sum(1 for status, _ in answers if status == 201)
    assert listing["pagination"]["total"] == len(saved) + created_in_background
    assert len({item["id"] for item in listing["data"]}) == len(listing["data"])
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 201, 503}, statuses
    assert max(seconds for _, seconds in answers) < 3
    assert target.client().cluster("countkeysinslot", slot) > 0
    assert source.client().cluster("countkeysinslot", slot) == 0


def test_read_from_replicas_on_a_cluster_without_replicas_reads_from_the_masters(cluster):
    config = Config(encryption_keys=TEST_KEYS, redis_url=cluster.url, redis_cluster=True,
                    key_prefix="ro", read_from_replicas=True)
    exercise_every_endpoint(create_app(config).test_client())
