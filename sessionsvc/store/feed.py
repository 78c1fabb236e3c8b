"""The whole store's event feed when the store has S > 1 shards (see *Sharding* in
``sessionsvc.store``).

Each shard writes its own stream. The feed reads every shard's next events in one
pipeline and merges them by Redis time (then shard, then sequence). Its cursor names a
place in every shard's stream, so that reading on from it neither loses nor repeats an
event, whatever order the shards' events were written in (``sessionsvc.store.cursors``
writes and reads it). A one-store cursor (a stream entry id) is taken as that place in
every shard: a time to read from.

Order. One user's events (one shard) come in exact order. Across shards they come in the
order of the Redis time their masters gave them, as far as it was known when read: an event
written after a read with a time no later than the events that read served (two shards in
the same millisecond; masters whose clocks differ) comes in the next read, not in its
time's place: late, never lost or repeated. A whole-store clear is one ``cleared`` event
per shard, each with the count it removed there (they add up to the clear's answer).

Cost. A read runs the events script on every shard, each reading at most
``shard_batch(S, limit)`` entries (with a type filter, scanning at most
``scan_budget(S, limit)``): about ``MERGE_ENTRIES`` entries in all, whatever S and
`limit`. Events are served up to the earliest place where a shard may hold more, so a
page can be shorter than `limit` while more events are held; `next` always moves on.
"""

from __future__ import annotations

from .cursors import Place, decode, encode, just_before, place_of, stream_id
from .events import events_answer
from .records import Event, EventPage, EventsTrimmed

# Entries one read of the merged feed asks of all shards together (at least MIN_BATCH each).
MERGE_ENTRIES = 4000
MIN_BATCH = 16


def shard_batch(shards: int, limit: int) -> int:
    return min(limit, max(MIN_BATCH, MERGE_ENTRIES // shards))


def scan_budget(shards: int, limit: int) -> int:
    return max(shard_batch(shards, limit), MERGE_ENTRIES // shards)


def _key(place: Place, shard: int) -> tuple[int, int, int]:
    """The merge order: Redis time, then shard, then sequence."""
    return place[0], shard, place[1]


def merged_events(store, after: str | None, limit: int, event_type: str | None) -> EventPage:
    """The whole store's events after `after`, oldest first, at most `limit` (see above).
    `store` is a ``ShardedStore``. Raises EventsTrimmed (naming, for every shard whose
    place is older than its oldest event held, that event's place) and BadCursor."""
    shards = store.shards
    count = len(shards)
    places = decode(after, count) if after else None
    batch, budget = shard_batch(count, limit), scan_budget(count, limit)
    arguments = [
        ("" if places is None else stream_id(places[k]), batch, budget, "", event_type or "")
        for k in range(count)
    ]
    replies = store._fan_out_each("events", arguments)
    answers, trimmed = [], {}
    for k, reply in enumerate(replies):
        try:
            answers.append(events_answer(reply))
        except EventsTrimmed as error:
            trimmed[k] = place_of(error.oldest)
    if trimmed:
        held = [trimmed.get(k, places[k]) for k in range(count)]
        raise EventsTrimmed(encode(held))

    # Serve up to the earliest place where a shard that did not end may hold more.
    frontier = min(
        (_key(place_of(next_cursor), k) for k, (_, next_cursor, ended) in enumerate(answers) if not ended),
        default=None,
    )
    candidates = sorted(
        (key, index)
        for k, (events, _, _) in enumerate(answers)
        for index, event in enumerate(events)
        for key in (_key(place_of(event.cursor), k),)
        if frontier is None or key <= frontier
    )[:limit]

    served = [0] * count  # events of each shard served so far

    def place(k: int) -> Place:
        # Where shard k's reading stands once its first served[k] events are served: past
        # every entry read when all were (a filter's passed-over entries included), else
        # at the last one served, else just before the first one read.
        events, next_cursor, _ = answers[k]
        if served[k] == len(events):
            return place_of(next_cursor)
        if served[k]:
            return place_of(events[served[k] - 1].cursor)
        return just_before(place_of(events[0].cursor))

    current = [place(k) for k in range(count)]
    out: list[Event] = []
    for (_, k, _), index in candidates:
        served[k] += 1
        current[k] = place(k)
        out.append(answers[k][0][index]._replace(cursor=encode(current)))
    final = [place(k) for k in range(count)]
    return EventPage(out, encode(final))
