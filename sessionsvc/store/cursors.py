"""Event cursors. One stream's cursor is its entry id, ``<ms>-<sequence>``. The merged
feed of a sharded store (``sessionsvc.store.feed``) names a place in each of S streams:

    s<base>.<place in shard 0>.<place in shard 1>. ... (S places)

``base`` is a time in ms; a place is empty (``0-0``, before every entry) or
``<ms - base>``, followed by ``_<sequence>`` when that is not 0; numbers in base 36.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .records import BadCursor

STREAM_ID = re.compile(r"([0-9]{1,15})-([0-9]{1,15})")
PLACE = re.compile(r"([0-9a-z]{1,11})(?:_([0-9a-z]{1,13}))?")
Place = tuple[int, int]  # (ms, sequence): a stream entry id; (0, 0) is before every entry

# The greatest sequence number a stream entry id may have: the place just before X-0.
LAST_SEQUENCE = 2**64 - 1


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


def encode(places: Sequence[Place]) -> str:
    base = min((ms for ms, _ in places if ms), default=0)
    parts = [
        "" if place == (0, 0) else _base36(place[0] - base) + (f"_{_base36(place[1])}" if place[1] else "")
        for place in places
    ]
    return f"s{_base36(base)}." + ".".join(parts)


def decode(cursor: str, shards: int) -> list[Place]:
    """The place in each of `shards` streams that `cursor` names: a stream entry id is that
    place in every stream; a merged cursor of another number of shards (another store's)
    is its earliest place in every stream (events may repeat, none is skipped). Raises
    BadCursor for a string that is neither."""
    entry_id = STREAM_ID.fullmatch(cursor)
    if entry_id:
        return [(int(entry_id[1]), int(entry_id[2]))] * shards
    head, _, rest = cursor.partition(".")
    parts = rest.split(".")
    if not head.startswith("s") or not rest:
        raise BadCursor(shards)
    try:
        base = int(head[1:], 36)
        places = []
        for part in parts:
            if not part:
                places.append((0, 0))
                continue
            match = PLACE.fullmatch(part)
            if not match:
                raise ValueError(part)
            places.append((base + int(match[1], 36), int(match[2] or "0", 36)))
    except ValueError:
        raise BadCursor(shards) from None
    return places if len(places) == shards else [min(places)] * shards


def one_stream(cursor: str) -> str:
    """`cursor` as a place in one stream (a store without shards, or one user's shard)."""
    return cursor if STREAM_ID.fullmatch(cursor) else stream_id(decode(cursor, 1)[0])


def place_of(cursor: str) -> Place:
    ms, _, sequence = cursor.partition("-")
    return int(ms), int(sequence)


def stream_id(place: Place) -> str:
    return f"{place[0]}-{place[1]}"


def just_before(place: Place) -> Place:
    ms, sequence = place
    return (ms, sequence - 1) if sequence else (ms - 1, LAST_SEQUENCE)
