"""What operators and monitoring ask of the store (see *Operations for operators and
monitoring* in ``sessionsvc.store``): readiness, the metrics census, the full passes of
the ``stats`` and ``rotate-keys`` commands, freeing cleared generations, and check-index."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from .records import Census, IndexReport
from .runner import ScriptRunner

RECLAIM_BATCH = 1000
CENSUS_SAMPLE = 200
SEALED_HEAD_BYTES = 17  # enough for '<key id>:' (key ids are at most 16 characters)


class StoreMaintenance(ScriptRunner):
    """The store's operations for operators and monitoring; ``TokenStore`` adds those
    that serve requests."""

    retention_ms: int  # set by TokenStore

    def ping(self) -> bool:
        return bool(self._attempt("ping", self.client.ping, any_error=True))

    def load_scripts(self) -> int:
        """Make sure Redis holds every script (SCRIPT EXISTS, then SCRIPT LOAD of any
        missing one, e.g. after a restart); returns how many had to be loaded."""
        scripts = list(self._scripts.values())

        def load() -> int:
            held = self.client.script_exists(*[script.sha for script in scripts])
            missing = [script for script, exists in zip(scripts, held, strict=True) if not exists]
            for script in missing:
                self.client.script_load(script.script)
            return len(missing)

        return self._attempt("load_scripts", load, any_error=True)

    def census(self, sample: int = CENSUS_SAMPLE) -> Census:
        return self._census_answer(self._run("census", sample, SEALED_HEAD_BYTES, retry=True))

    @staticmethod
    def _census_answer(reply: list) -> Census:
        seals = reply[2]
        encryptions = {seals[i].decode("ascii"): int(seals[i + 1]) for i in range(0, len(seals), 2)}
        return Census(records=int(reply[0]), pruned=int(reply[1]), encryptions=encryptions,
                      sealed_heads=list(reply[3:]))

    def encryptions(self, key_id: str) -> int:
        """How many tokens the store has seen sealed under one key id (HGET of ``seals``)."""
        count = self._attempt("encryptions", lambda: self.client.hget(self.root + ":seals", key_id), retry=True)
        return int(count or 0)

    def scan(self, chunk: int = 500) -> Iterator[tuple[int, str, bytes]]:
        """Every record of the current generation as (number, user id, sealed token)."""
        position = 0
        while True:
            reply = self._run("scan", position, chunk, retry=True)
            for index in range(1, len(reply), 3):
                yield int(reply[index]), reply[index + 1].decode("ascii"), reply[index + 2]
            if reply[0] < chunk:
                return
            position += chunk

    def reseal(self, number: int, old: bytes, new: bytes) -> bool:
        """Replace a record's sealed token, unless it changed since `old` was read."""
        return bool(self._run("reseal", number, old, new))

    def reclaim(self, batch: int = RECLAIM_BATCH, deadline_seconds: float = 30.0) -> int:
        """Free cleared generations in bounded batches (never blocks Redis for long)."""
        freed, started = 0, time.monotonic()
        while time.monotonic() - started < deadline_seconds:
            step = int(self._run("reclaim", batch))
            freed += step
            if step == 0:
                break
        return freed

    def check_index(self, repair: bool = False, batch: int = 500) -> IndexReport:
        """Compare records and index entries of the current generation; with `repair`,
        re-index records, give TTL-less records their TTL and drop dangling entries.

        Index entries of records Redis has expired are pruned first (routine, what every
        save does), so whatever dangles afterwards is damage.
        """
        pruned = 0
        while step := int(self._run("prune", batch)):
            pruned += step
        flag = "1" if repair else "0"
        unindexed = no_ttl = stale = 0
        for keys in self._scan_keys(self.root + ":r:*", batch):
            numbers = [key[len(self.root) + 3 :] for key in keys]
            found = [int(count) for count in self._run("check_records", self.retention_ms, flag, *numbers)]
            unindexed, no_ttl, stale = unindexed + found[0], no_ttl + found[1], stale + found[2]
        generation = self._attempt("check_index", lambda: self.client.get(self.root + ":gen"), any_error=True)
        user_prefix = f"{self.root}:u:{int(generation or 0)}:"
        indexes = [("all", b""), ("exp", b"")]
        for keys in self._scan_keys(user_prefix + "*", batch):
            indexes += [("user", key[len(user_prefix) :]) for key in keys]
        dangling = 0
        for kind, user in indexes:
            position = 0
            while True:
                read, found_here = (int(x) for x in self._run("check_entries", flag, kind, user, position, batch))
                dangling += found_here
                if read < batch:
                    break
                position += read - (found_here if repair else 0)
        return IndexReport(pruned, dangling, unindexed, no_ttl, stale)

    def _scan_keys(self, pattern: str, batch: int) -> Iterator[list[bytes]]:
        """Names of keys matching a pattern of the store's own prefix, in batches (SCAN,
        never KEYS; no user input is ever part of the pattern)."""
        keys = self.client.scan_iter(match=pattern, count=batch)
        while chunk := self._attempt("scan_keys", lambda: list(itertools.islice(keys, batch)), any_error=True):
            yield chunk
