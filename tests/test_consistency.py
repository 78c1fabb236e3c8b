"""Atomicity: concurrent saves, refreshes and deletes on real Redis leave the indexes and
the records consistent, and the total exact."""

from __future__ import annotations

import random
import threading

from conftest import API, future
from invariants import check_store


def test_concurrent_saves_refreshes_and_deletes_keep_the_indexes_exact(real_app, real_redis):
    created: list[str] = []
    deleted: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def worker(seed: int) -> None:
        client = real_app.test_client()
        rng = random.Random(seed)
        for step in range(60):
            action = rng.random()
            with lock:
                known = [record_id for record_id in created if record_id not in deleted]
            if action < 0.5 or not known:
                response = client.post(API, json={"user_id": f"user{rng.randrange(5)}",
                                                  "token": f"token-{seed}-{step}", "expires_at": future()})
                if response.status_code != 201:
                    errors.append(f"POST {response.status_code}")
                    continue
                with lock:
                    created.append(response.json["id"])
            elif action < 0.8:
                target = rng.choice(known)
                body = {"token": f"refresh-{seed}-{step}", "expires_at": future()}
                response = client.put(f"{API}/{target}", json=body)
                if response.status_code not in (200, 404):
                    errors.append(f"PUT {response.status_code}")
            else:
                target = rng.choice(known)
                response = client.delete(f"{API}/{target}")
                if response.status_code == 200:
                    with lock:
                        deleted.add(target)
                elif response.status_code != 404:
                    errors.append(f"DELETE {response.status_code}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(created)) == len(created), "an id was handed out twice"
    live = set(created) - deleted
    client = real_app.test_client()
    listing = client.get(API, query_string={"limit": 100}).json
    assert listing["pagination"]["total"] == len(live)
    by_user = check_store(real_redis)
    assert sum(len(numbers) for numbers in by_user.values()) == len(live)
    pages = []
    for page in range(1, len(live) // 100 + 2):
        pages += [row["id"] for row in client.get(API, query_string={"limit": 100, "page": page}).json["data"]]
    assert sorted(pages) == sorted(live)


def test_clear_racing_saves_never_leaves_half_records(real_app, real_redis):
    def saver(seed: int) -> None:
        client = real_app.test_client()
        for step in range(40):
            client.post(API, json={"user_id": f"u{seed}", "token": f"t-{seed}-{step}", "expires_at": future()})

    def clearer() -> None:
        client = real_app.test_client()
        for _ in range(10):
            client.delete(API)

    threads = [threading.Thread(target=saver, args=(seed,)) for seed in range(4)] + [threading.Thread(target=clearer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by_user = check_store(real_redis)
    total = real_app.test_client().get(API).json["pagination"]["total"]
    assert total == sum(len(numbers) for numbers in by_user.values())
