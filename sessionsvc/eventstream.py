"""The store's events as Server-Sent Events (``Accept: text/event-stream`` on
``GET /api/v1/session-storage/events``).

Each event is one frame: ``id:`` its cursor, ``event:`` its type, ``data:`` the same JSON
object the JSON answer lists. When the stream has nothing new, the response waits in a
blocking read of the stream (XREAD BLOCK, shorter than the Redis socket timeout) and
sends a comment every ``SESSIONSVC_EVENTS_HEARTBEAT_SECONDS`` so that proxies keep the
connection; it ends after ``SESSIONSVC_EVENTS_STREAM_SECONDS``, when Redis fails, or when
the client goes (found at the next write), and the client reconnects with
``Last-Event-ID``.

Under gunicorn's gevent worker a waiting response is a greenlet parked on a socket: it
holds no worker. Under gthread it holds one of the worker's threads for as long as it
lasts (SESSIONSVC_THREADS per worker), so there a few long-lived streams can take every
thread: use gevent for event streams, or shorter SESSIONSVC_EVENTS_STREAM_SECONDS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from flask import Response

from .store import Event, EventPage, EventsTrimmed, StoreUnavailable
from .vault import TokenVault

MIMETYPE = "text/event-stream"
# How long an EventSource waits before it reconnects after the response ends.
RECONNECT_MS = 1000


def frame(event: Event, render: Callable[[Event], str]) -> bytes:
    return f"id: {event.cursor}\nevent: {event.type}\ndata: {render(event)}\n\n".encode()


def event_stream(
    vault: TokenVault,
    first: EventPage,
    after: str | None,
    limit: int,
    user_id: str | None,
    event_type: str | None,
    *,
    seconds: float,
    heartbeat_seconds: float,
    wait_ms: int,
    render: Callable[[Event], str],
) -> Iterator[bytes]:
    """The frames of one response: `first` (already read, so that a bad cursor or a Redis
    failure is answered as JSON before the stream starts), then what the stream gains."""
    deadline = time.monotonic() + seconds
    last_write = time.monotonic()
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    page, cursor = first, after
    while True:
        if page.events:
            yield b"".join(frame(event, render) for event in page.events)
            last_write = time.monotonic()
        elif page.next != cursor:
            # Entries a filter passed over: an id alone moves the client's Last-Event-ID past them.
            yield f"id: {page.next}\n\n".encode()
            last_write = time.monotonic()
        moved, cursor = page.next != cursor, page.next
        now = time.monotonic()
        if now >= deadline:
            return
        if not moved:
            if now - last_write >= heartbeat_seconds:
                yield b": heartbeat\n\n"
                last_write = now
            quiet_ms = (heartbeat_seconds - (now - last_write)) * 1000
            timeout_ms = int(max(1, min(wait_ms, (deadline - now) * 1000, quiet_ms)))
            try:
                if not vault.wait_for_events(cursor, timeout_ms, user_id):
                    page = EventPage([], cursor)
                    continue
            except StoreUnavailable:
                return
        try:
            page = vault.events(cursor, limit, user_id, event_type)
        except (StoreUnavailable, EventsTrimmed):
            return  # the client reconnects; a trimmed cursor is then answered 410


class StreamSlots:
    """How many event streams this process may serve at once (SESSIONSVC_EVENTS_MAX_STREAMS):
    a waiting stream holds one of the pool's Redis connections, so without a bound enough
    open streams would leave none for requests."""

    def __init__(self, size: int):
        self._free = threading.BoundedSemaphore(size)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give_back(self) -> None:
        self._free.release()


class _SlotHolding:
    """The frames of one response, giving its slot back when the server closes it (also
    when it never iterated them: a generator that never started runs no `finally`)."""

    def __init__(self, frames: Iterator[bytes], slots: StreamSlots):
        self._frames, self._slots, self._held = frames, slots, True

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        try:
            self._frames.close()
        finally:
            if self._held:
                self._held = False
                self._slots.give_back()


def event_stream_response(frames: Iterator[bytes], slots: StreamSlots) -> Response:
    """The streaming response, holding one of `slots` (taken by the caller) until closed."""
    # X-Accel-Buffering: nginx would otherwise hold the frames back until its buffer fills.
    return Response(_SlotHolding(frames, slots), mimetype=MIMETYPE, headers={"X-Accel-Buffering": "no"},
                    direct_passthrough=True)
