"""How the store runs its scripts: on the primary, or on replicas for reads; timed for the
observer; Redis saying "not now" turned into ``StoreUnavailable``; retried only when safe
to repeat; followed by WAIT when writes must reach replicas (see *Topologies* and
*Failures and retries* in ``sessionsvc.store``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterPipeline
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .client import unavailable_kind
from .records import Observer, StoreUnavailable
from .scripts import SCRIPTS, WRITES, script_source

READ_RETRIES = 2
# Full jitter: the n-th retry waits a random 0..min(cap, base * 2**n) seconds.
BACKOFF = ExponentialWithJitterBackoff(base=0.025, cap=0.25)


class ScriptRunner:
    """The store's scripts registered on its client, and the one way to run them (the
    topology options are described on ``TokenStore``)."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        *,
        observe: Observer | None = None,
        replicas: Any = None,
        min_replicas_ack: int = 0,
        replica_ack_timeout_ms: int = 500,
    ):
        self.client = client
        self.replicas = replicas
        self.min_replicas_ack = min_replicas_ack
        self.replica_ack_timeout_ms = replica_ack_timeout_ms
        self.root = "{" + key_prefix + "}"
        self.observe = observe
        # The guard never exists: declaring it makes Redis refuse (TRYAGAIN) to run a
        # script while the store's slot is half-migrated, instead of letting it run on
        # the node that holds only part of the store.
        self._keys = [self.root + ":gen", self.root + ":slot-guard"]
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    def _attempt(
        self, operation: str, command: Callable[[], Any], retry: bool = False, any_error: bool = False
    ) -> Any:
        """Run one Redis call; Redis saying "not now" becomes StoreUnavailable(kind), and
        the duration and outcome are reported to the observer.

        With `retry` (only for calls safe to repeat), a failed or reset connection is
        retried up to READ_RETRIES times after a jittered backoff; timeouts, LOADING and
        an exhausted pool are not, so no call waits much longer than one timeout.
        `any_error` maps every Redis error, for calls whose other failures tell the
        caller nothing more.
        """
        started, failed_kind, failures = time.perf_counter(), None, 0
        try:
            while True:
                try:
                    return command()
                except StoreUnavailable as error:
                    failed_kind = error.kind
                    raise
                except (RedisError, RedisClusterException) as error:
                    kind = unavailable_kind(error) or ("error" if any_error else None)
                    failed_kind = kind or "error"
                    if kind is None:
                        raise
                    if not (retry and kind == "connection" and failures < READ_RETRIES):
                        raise StoreUnavailable(kind) from None
                    failures += 1
                    time.sleep(BACKOFF.compute(failures))
        finally:
            if self.observe is not None:
                self.observe(operation, time.perf_counter() - started, failed_kind)

    def _acknowledged(self, queue: Callable[[Any], Any]) -> Any:
        """The queued write and a WAIT for replicas, on one connection in one round-trip
        (Redis forbids WAIT inside scripts). Returns the write's reply."""
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                queue(pipe)
                pipe.wait(self.min_replicas_ack, self.replica_ack_timeout_ms)
                reply, acknowledged = pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                # Not run at all (a new or restarted master): load the scripts, go again.
                for script in self._scripts.values():
                    script.sha = self.client.script_load(script.script)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if acknowledged < self.min_replicas_ack:
                # The write is on the primary and may still reach a replica: unknown outcome.
                raise StoreUnavailable("replica_ack")
            return reply
        raise StoreUnavailable("noscript")

    def _run(self, name: str, *args: Any, retry: bool = False) -> Any:
        """A script on the primary; writes wait for replicas when so configured."""
        script, argv = self._scripts[name], [self.root, *args]
        if self.min_replicas_ack and name in WRITES:
            return self._attempt(
                name,
                lambda: self._acknowledged(lambda pipe: pipe.evalsha(script.sha, len(self._keys), *self._keys, *argv)),
                retry,
            )
        return self._attempt(name, lambda: script(keys=self._keys, args=argv), retry)

    def _queue(self, pipe: Any, name: str, *args: Any, read_only: bool = False) -> None:
        """One of the store's scripts queued on a pipeline by its SHA (EVALSHA, or
        EVALSHA_RO). Through execute_command: redis-py's cluster pipeline refuses its
        ``evalsha`` method, as it cannot load a missing script on a node; a caller that
        meets NOSCRIPT in the replies loads the scripts or asks again on its own."""
        command, options = ("EVALSHA_RO" if read_only else "EVALSHA"), {}
        if isinstance(pipe, ClusterPipeline):
            # Named, the node is not asked for the keys of every EVALSHA (COMMAND GETKEYS to
            # the default node, one round-trip each, before the pipeline is sent). A slot
            # that moved meanwhile answers MOVED, which the pipeline follows.
            replica = read_only and pipe.get_node_from_key(self._keys[0], replica=True)
            options["target_nodes"] = replica or pipe.get_node_from_key(self._keys[0])
        pipe.execute_command(command, self._scripts[name].sha, len(self._keys), *self._keys, self.root, *args,
                             **options)

    def _read(self, name: str, *args: Any) -> Any:
        """A read-only script on a replica (EVALSHA_RO). The caller passes arguments that
        make the script write nothing: no pruning, no reveal counting."""
        script = self._scripts[name]
        keys_and_args = (*self._keys, self.root, *args)

        def run() -> Any:
            try:
                return self.replicas.evalsha_ro(script.sha, len(self._keys), *keys_and_args)
            except NoScriptError:
                return self.replicas.eval_ro(script.script, len(self._keys), *keys_and_args)

        return self._attempt(name, run, retry=True)
