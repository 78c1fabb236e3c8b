"""Checks that the event stream tells exactly what happened to the store: a snapshot of the
stream and the records taken in one atomic step (a read-only Lua script of the test's own,
reading the key layout documented in sessionsvc/store/__init__.py), the stream replayed,
and the two compared. An independent reader: it trusts none of the store's scripts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Reads, in one step: generation, Redis time (ms), the listing's records with their
# user and expiry, the `due` index, and the whole stream.
SNAPSHOT = """
local root = ARGV[1]
local gen = redis.call('GET', root .. ':gen') or '0'
local clock = redis.call('TIME')
local held = redis.call('ZRANGE', root .. ':all:' .. gen, 0, -1)
local fields = {}
for _, n in ipairs(held) do
  local h = redis.call('HMGET', root .. ':r:' .. n, 'u', 'e')
  fields[#fields + 1] = {n, h[1] or '', h[2] or ''}
end
return {tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000), fields,
        redis.call('ZRANGE', root .. ':due:' .. gen, 0, -1), redis.call('XRANGE', root .. ':events', '-', '+')}
"""


def decoded(fields: list) -> dict[str, str]:
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


@dataclass
class Replay:
    """What the stream says the store holds: record number -> (user, expires_at), and
    every expiry told, (number, expires_at) -> times told."""

    held: dict[int, tuple[str, int]] = field(default_factory=dict)
    told: dict[tuple[int, int], int] = field(default_factory=dict)
    types: list[str] = field(default_factory=list)

    def apply(self, event: dict[str, str]) -> None:
        kind = event["type"]
        self.types.append(kind)
        if kind == "cleared":
            user, kept = event.get("u"), int(event.get("k", 0))
            self.held = {} if user is None else {
                n: held for n, held in self.held.items() if held[0] != user or n == kept}
            return
        number, user, expires = int(event["n"]), event["u"], int(event["e"])
        if kind in ("created", "refreshed"):
            self.held[number] = (user, expires)
        elif kind in ("deleted", "evicted"):
            assert self.held.pop(number, None) == (user, expires), f"{kind} of a record not held: {event}"
        elif kind == "expired":
            self.told[number, expires] = self.told.get((number, expires), 0) + 1


def disagreements(raw: Any, prefix: str = "sessionsvc") -> list[str]:
    """How the store and its event stream disagree (empty when they agree). Needs records
    that stay held (no retention ending) while it is used."""
    now_ms, records, due, entries = raw.eval(SNAPSHOT, 0, "{" + prefix + "}")
    replay = Replay()
    for _, fields in entries:
        replay.apply(decoded(fields))
    held = {int(n): (user.decode(), int(expires)) for n, user, expires in records}
    due_members = {member.decode() for member in due}
    problems = []
    if held != replay.held:
        problems.append(f"store holds {held}, the events say {replay.held}")
    for number, (user, expires) in held.items():
        in_due = f"{number}:{user}" in due_members
        told = replay.told.get((number, expires), 0)
        if expires * 1000 > now_ms and (told or not in_due):
            problems.append(f"record {number} not yet expired: due {in_due}, told {told} times")
        if expires * 1000 <= now_ms and in_due + told != 1:
            problems.append(f"record {number} expired: due {in_due}, told {told} times (exactly one expected)")
    problems += [f"expiry {key} told {count} times" for key, count in replay.told.items() if count > 1]
    return problems


def stream(raw: Any, prefix: str = "sessionsvc") -> list[dict[str, str]]:
    """Every event the stream holds, oldest first, as stored."""
    return [decoded(fields) for _, fields in raw.eval(SNAPSHOT, 0, "{" + prefix + "}")[3]]
