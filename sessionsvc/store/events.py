"""The store's event stream: reading it, waiting for it, and telling expiries (see *Events*
in ``sessionsvc.store``). The events themselves are appended by the scripts that make
each change, in the same step; nothing here writes one except through ``sweep``."""

from __future__ import annotations

from .cursors import one_stream
from .records import Event, EventPage, EventsTrimmed
from .runner import ScriptRunner
from .scripts import EventsReply, SweepReply

# Stream entries a filtered read passes over at most (its `next` then points past them).
EVENTS_SCAN_BUDGET = 1000


def event_from_entry(cursor: bytes, fields: list) -> Event:
    """One stream entry (its id and its field list, as XRANGE answers) as an Event."""
    values = {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}
    cursor_text = cursor.decode("ascii")
    number, user, expires, count, kept = (values.get(name) for name in (b"n", b"u", b"e", b"c", b"k"))
    return Event(
        cursor=cursor_text,
        type=values[b"type"].decode("ascii"),
        at=int(cursor_text.partition("-")[0]) // 1000,
        number=None if number is None else int(number),
        user_id=None if user is None else user.decode("ascii"),
        expires_at=None if expires is None else int(expires),
        count=None if count is None else int(count),
        kept_number=None if kept is None else int(kept),
    )


def events_answer(reply: list) -> tuple[list[Event], str, bool]:
    """The events script's reply: the events, the cursor to read on from, and whether the
    stream ended there (nothing after it yet). Raises EventsTrimmed."""
    if reply[0] == EventsReply.TRIMMED:
        raise EventsTrimmed(reply[1].decode("ascii"))
    entries = reply[2:]
    events = [event_from_entry(entries[i], entries[i + 1]) for i in range(0, len(entries), 2)]
    return events, reply[1].decode("ascii"), reply[0] == EventsReply.END


class StoreEvents(ScriptRunner):
    """Reading the event stream and telling expiries; ``TokenStore`` adds the rest."""

    events_maxlen: int  # set by TokenStore

    @property
    def events_key(self) -> str:
        return self.root + ":events"

    def events(
        self, after: str | None = None, limit: int = 100, user_id: str | None = None, event_type: str | None = None
    ) -> EventPage:
        """Events after the cursor `after` (None: from the oldest held), oldest first, at
        most `limit`; with filters, at most EVENTS_SCAN_BUDGET entries are read. Raises
        EventsTrimmed when `after` is older than the oldest event held."""
        start = one_stream(after) if after else ""
        reply = self._run("events", start, limit, EVENTS_SCAN_BUDGET, user_id or "", event_type or "", retry=True)
        events, next_cursor, _ = events_answer(reply)
        return EventPage(events, next_cursor)

    def wait_for_events(self, after: str, timeout_ms: int, user_id: str | None = None) -> bool:
        """Block until the stream holds an entry after `after` or `timeout_ms` passes
        (XREAD BLOCK, on a connection of its own for that long: under gevent only this
        greenlet waits). True when there is one to read. (`user_id` routes a sharded
        store's wait; one store has one stream.)"""
        key, after = self.events_key, one_stream(after)
        reply = self._attempt(
            "wait_events", lambda: self.client.xread({key: after}, count=1, block=max(1, timeout_ms))
        )
        return bool(reply)

    def sweep(self, holder: str, lease_ms: int, batch: int) -> int | None:
        """Take or renew the sweeper lease for `holder` and tell up to `batch` expiries
        that have come; the number told, or None while another holder has the lease."""
        reply = self._run("sweep", holder, lease_ms, batch, self.events_maxlen)
        return int(reply[1]) if reply[0] == SweepReply.SWEPT else None

    def release_sweeper(self, holder: str) -> bool:
        """Give up the sweeper lease, if `holder` has it, so another process takes it at once."""
        return bool(self._run("release_sweeper", holder))
