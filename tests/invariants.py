"""An index checker for tests: every way a record and its index entries could disagree.

Reads the key layout documented in sessionsvc/store/__init__.py directly, so it checks the store
from outside rather than trusting its scripts. Run it on a store nobody is writing to.
"""

from __future__ import annotations

from typing import Any

RECORD_FIELDS = (b"u", b"t", b"p", b"e", b"s", b"c", b"o", b"g")


def shard_roots(raw: Any, root: str) -> list[str]:
    """The hash tags of a store's shard stores: its own (`{P}`, the only one with S = 1),
    and each `{P/k}` that holds keys."""
    found = {key.decode().split("}", 1)[0] + "}" for key in raw.scan_iter(match=root[:-1] + "/*}:*", count=1000)}
    return [root, *sorted(found)]


def index_problems(raw: Any, prefix: str = "sessionsvc") -> list[str]:
    """Every inconsistency found in any shard of the store (see `shard_problems`)."""
    return [problem for root in shard_roots(raw, "{" + prefix + "}") for problem in shard_problems(raw, root)]


def shard_problems(raw: Any, root: str) -> list[str]:
    """Every inconsistency found in one store's keys under `root` (empty when it is sound):

    - a record hash without a TTL, missing fields, or (in the current generation) missing
      from any of its three indexes, or indexed with the wrong score;
    - a record of an older generation whose generation is not queued for reclaim;
    - an index entry whose record is gone although it has not passed retention;
    - a record whose expiry is still to come missing from ``due`` (or with another
      score), or a ``due`` entry of a record not held whose expiry is still to come.
    """
    generation = int(raw.get(f"{root}:gen") or 0)
    queued = {int(member) for member in raw.smembers(f"{root}:reclaim")}
    all_key, exp_key = f"{root}:all:{generation}", f"{root}:exp:{generation}"
    due = {member.decode(): score for member, score in raw.zrange(f"{root}:due:{generation}", 0, -1, withscores=True)}
    problems: list[str] = []
    live: dict[int, str] = {}
    due_check: list[tuple[int, str, int]] = []

    for key in raw.scan_iter(match=f"{root}:r:*", count=1000):
        number = int(key.rsplit(b":", 1)[1])
        fields = raw.hgetall(key)
        death = raw.pexpiretime(key)
        if not fields or death == -2:
            continue  # expired while we looked
        if death == -1:
            problems.append(f"record {number} has no TTL")
        missing = [name.decode() for name in RECORD_FIELDS if name not in fields]
        if missing:
            problems.append(f"record {number} is missing fields {missing}")
            continue
        record_generation = int(fields[b"g"])
        if record_generation != generation:
            if record_generation not in queued:
                problems.append(f"record {number} of generation {record_generation} is not queued for reclaim")
            continue
        user = fields[b"u"].decode()
        version = float(fields[b"o"])
        live[number] = user
        if raw.zscore(all_key, number) != version:
            problems.append(f"record {number} is not in the listing with its version")
        if raw.zscore(f"{root}:u:{generation}:{user}", number) != version:
            problems.append(f"record {number} is not in its user's listing with its version")
        if death != -1 and raw.zscore(exp_key, f"{number}:{user}") != float(death):
            problems.append(f"record {number} is not in the expiry index with its death")
        expires_ms = int(fields[b"e"]) * 1000
        if due.get(f"{number}:{user}", expires_ms) != expires_ms:
            problems.append(f"record {number} is due with another expiry than its own")
        due_check.append((number, user, expires_ms))

    entries = {}
    for member, score in raw.zrange(exp_key, 0, -1, withscores=True):
        number, _, user = member.decode().partition(":")
        entries[int(number)] = (user, score)
    listed = {int(member) for member in raw.zrange(all_key, 0, -1)}
    by_user: dict[str, set[int]] = {}
    for user_key in raw.scan_iter(match=f"{root}:u:{generation}:*", count=1000):
        user = user_key.decode().split(":", 3)[3]
        by_user[user] = {int(member) for member in raw.zrange(user_key, 0, -1)}
    now_seconds, now_micros = raw.time()
    now_ms = now_seconds * 1000 + now_micros // 1000  # read last: a record gone by now has died

    for number in listed - set(entries):
        problems.append(f"listing entry {number} has no expiry entry")
    for user, numbers in by_user.items():
        for number in numbers:
            if entries.get(number, (None,))[0] != user:
                problems.append(f"user index {user!r} holds {number} without a matching expiry entry")
    for number, user, expires_ms in due_check:
        if expires_ms > now_ms and f"{number}:{user}" not in due:
            problems.append(f"record {number} expires later but is not due")
    for member, expires_ms in due.items():
        number, _, user = member.partition(":")
        if expires_ms > now_ms and int(number) not in live:
            problems.append(f"due entry {member} names a record not held")
    for number, (user, death) in entries.items():
        if number in live:
            continue
        if death > now_ms:
            problems.append(f"index entry {number} ({user!r}) outlives its record by {int(death - now_ms)} ms")
    return problems


def check_store(raw: Any, root: str = "{sessionsvc}") -> dict[str, set[str]]:
    """`check_shard` on every shard of the store; returns live numbers by user."""
    by_user: dict[str, set[str]] = {}
    for shard_root in shard_roots(raw, root):
        for user, numbers in check_shard(raw, shard_root).items():
            by_user.setdefault(user, set()).update(numbers)
    return by_user


def check_shard(raw: Any, root: str) -> dict[str, set[str]]:
    """Assert that every record of the current generation is in exactly its three indexes
    with a TTL, and every index entry points at a record; returns live numbers by user."""
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
