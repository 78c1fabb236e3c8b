"""An independent reading of the store's key layout, to check its invariants in tests."""

from __future__ import annotations

import redis


def check_store(raw: redis.Redis, root: str = "{sessionsvc}") -> dict:
    """Every record is in exactly the three indexes of the current generation and has a TTL;
    every index entry points at a record. Returns the live record numbers by user."""
    gen = (raw.get(f"{root}:gen") or b"0").decode()
    records = {}
    for key in raw.scan_iter(match=f"{root}:r:*", count=1000):
        number = key.decode().rsplit(":", 1)[1]
        fields = raw.hmget(key, "u", "g")
        if fields[0] is None:
            continue  # expired between SCAN and HMGET
        if fields[1].decode() != gen:
            continue  # a cleared generation, still being reclaimed
        assert raw.pttl(key) > 0, f"record {number} has no TTL"
        records[number] = fields[0].decode()
    listed = {member.decode() for member in raw.zrange(f"{root}:all:{gen}", 0, -1)}
    expiring = {member.decode().split(":", 1)[0]: member.decode().split(":", 1)[1]
                for member in raw.zrange(f"{root}:exp:{gen}", 0, -1)}
    assert listed == set(records), f"all-index {sorted(listed ^ set(records))} differ from records"
    assert expiring == records, "exp-index disagrees with records"
    by_user: dict[str, set[str]] = {}
    for number, user in records.items():
        by_user.setdefault(user, set()).add(number)
    for key in raw.scan_iter(match=f"{root}:u:{gen}:*", count=1000):
        user = key.decode().split(":", 3)[3]
        members = {member.decode() for member in raw.zrange(key, 0, -1)}
        assert members == by_user.get(user, set()), f"user index of {user!r} disagrees"
    return by_user
