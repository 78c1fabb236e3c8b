"""Record numbers: handed out to creates in blocks, and remembered with their owners.

Both are kept per process without invalidation because a number is never reused and a
record's user never changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from .records import StoreUnavailable

ID_BLOCK = 16
# Saves (PUT) need the record's owner to bind the new ciphertext to; a miss costs the save
# a second round-trip (the owner script).
OWNER_CACHE_SIZE = 50_000


class _Refill:
    """A block of ids on its way from Redis, and how its fetch ended for those waiting."""

    __slots__ = ("done", "failure")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failure: str | None = None  # the StoreUnavailable kind it failed with


class IdBlocks:
    """Record numbers reserved from Redis ``ID_BLOCK`` at a time. ``fetch_block(size)``
    reserves the next ``size`` numbers in Redis and returns the last of them."""

    def __init__(self, fetch_block: Callable[[int], int]):
        self._fetch_block = fetch_block
        self._lock = threading.Lock()
        self._next_number = 0
        self._block_end = 0
        self._refill: _Refill | None = None

    def reserve(self) -> int:
        """A record number no other caller will ever get.

        One caller at a time fetches the next block (the lock guards only the block in
        memory, never a Redis call); callers that find the block used up while it is on
        its way wait for it instead of fetching blocks of their own. Without that, a busy
        gevent worker fetched a block for every create waiting at that moment and used one
        number of each: a second round-trip on most creates. When the fetch fails, its
        waiters fail with it at once, so on a stalled Redis they answer side by side, not
        one timeout after another.
        """
        while True:
            with self._lock:
                if self._next_number < self._block_end:
                    self._next_number += 1
                    return self._next_number - 1
                refill = self._refill
                if refill is None:
                    refill = self._refill = _Refill()
                    break
            refill.done.wait()
            if refill.failure is not None:
                raise StoreUnavailable(refill.failure)
        try:
            end = int(self._fetch_block(ID_BLOCK))
        except StoreUnavailable as error:
            refill.failure = error.kind
            raise
        else:
            first = end - ID_BLOCK + 1
            with self._lock:  # nobody else refills: the block is still used up
                self._next_number, self._block_end = first + 1, end + 1
            return first
        finally:  # after the block is in place; on any other error too (waiters then try themselves)
            with self._lock:
                self._refill = None
            refill.done.set()

    def forget(self) -> None:
        """Drop the rest of the block (its numbers turned out to be taken)."""
        with self._lock:
            self._next_number = self._block_end = 0


class OwnerCache(OrderedDict[int, str]):
    """Record number -> user id of the records this process has seen, the most recent
    ``OWNER_CACHE_SIZE``."""

    def remember(self, number: int, user_id: str) -> None:
        if number in self:
            return
        self[number] = user_id
        if len(self) > OWNER_CACHE_SIZE:
            try:
                self.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                pass
