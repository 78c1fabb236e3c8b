"""The expiry sweeper: tells each record's expiry as an `expired` event within seconds of
its ``expires_at``, with no other traffic at all.

Every app process runs one in a background thread (a greenlet under gevent's
monkey-patching), started by the app factory unless SESSIONSVC_EXPIRY_SWEEP=false. About
once a second each asks the store's sweep script, which takes or renews a lease in Redis
(``{P}:sweeper``) and, for the one process holding it, tells the expiries that have come.
When the holder stops or dies its lease runs out within ``LEASE_MS`` and the next process
to ask takes it. The lease only saves work: each expiry leaves the store's ``due`` index
in the same script that tells it, so it is told exactly once whoever sweeps (writes tell
the expiries due before their own change too). No keyspace notifications: those are lost
while nobody listens and on Cluster failovers.

The sweeper never raises into the request path and outlives Redis outages: a failed tick
is logged when the failures start and when they end, and the next tick tries again.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref

from .store import StoreUnavailable, TokenStore

log = logging.getLogger("sessionsvc")

SWEEP_INTERVAL_SECONDS = 1.0
# Several ticks long, so one late tick (a busy event loop) does not hand the lease over.
LEASE_MS = 3000
SWEEP_BATCH = 500
# A tick goes on taking batches (each one short script call) while expiries are due, up to
# this long; a larger burst goes on at the next tick.
TICK_BUDGET_SECONDS = 0.5


class ExpirySweeper:
    def __init__(self, store: TokenStore, interval_seconds: float = SWEEP_INTERVAL_SECONDS,
                 lease_ms: int = LEASE_MS, batch: int = SWEEP_BATCH):
        self.store = store
        self.interval_seconds = interval_seconds
        self.lease_ms = lease_ms
        self.batch = batch
        self.holder = secrets.token_hex(12)  # this sweeper's name on the lease
        self.failing: str | None = None  # the kind of the failure in progress, if any
        self._stopped = threading.Event()

    def sweep(self) -> int | None:
        """One tick: take or renew the lease and tell the expiries due, batch after batch
        for up to TICK_BUDGET_SECONDS. The number told, or None while another process
        holds the lease."""
        told, started = 0, time.monotonic()
        while True:
            step = self.store.sweep(self.holder, self.lease_ms, self.batch)
            if step is None:
                return None
            told += step
            if step < self.batch or time.monotonic() - started > TICK_BUDGET_SECONDS:
                return told

    def tick(self) -> None:
        """`sweep`, with every failure logged instead of raised."""
        try:
            self.sweep()
        except StoreUnavailable as error:
            if self.failing is None:
                log.warning("expiry sweep failing; retrying every tick", extra={"redis_error": error.kind})
            self.failing = error.kind
            return
        except Exception as error:  # noqa: BLE001 - a background loop must survive anything
            log.error("expiry sweep failed", extra={"error_type": type(error).__name__})
            self.failing = "error"
            return
        if self.failing is not None:
            log.warning("expiry sweep recovered", extra={"redis_error": self.failing})
            self.failing = None

    def start(self) -> None:
        """Sweep in a daemon thread until `stop`, or until this sweeper is garbage (the
        thread holds it only weakly, so an app that is dropped takes its thread along)."""
        thread = threading.Thread(
            target=_run, args=(weakref.ref(self), self._stopped, self.interval_seconds),
            name="sessionsvc-expiry-sweeper", daemon=True,
        )
        thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop sweeping; with `release`, give the lease up so another process takes it at once."""
        self._stopped.set()
        if release:
            try:
                self.store.release_sweeper(self.holder)
            except StoreUnavailable:
                pass  # it runs out by itself


def _run(sweeper_ref: weakref.ref, stopped: threading.Event, interval_seconds: float) -> None:
    while not stopped.wait(interval_seconds):
        sweeper = sweeper_ref()
        if sweeper is None:
            return
        sweeper.tick()
        del sweeper
