"""Topologies of private redis-servers a test starts, kills and stops itself: a master with
a replica watched by three Sentinels, a Cluster of masters, single nodes (one on a unix
socket). Every node is a redis_server.RedisServer; never the machine's shared Redis."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redis_server import REDIS_CLI, REDIS_SERVER, RedisServer, wait_until

SERVICE = "mymaster"


def need_binaries(*names: str) -> None:
    found = {"redis-server": REDIS_SERVER, "redis-cli": REDIS_CLI}
    missing = [name for name in names if not found[name]]
    if missing:
        pytest.skip(f"no {', '.join(missing)} binary on this machine (CI installs redis-server and redis-tools)")


class RedisNode(RedisServer):
    """One redis-server (or Sentinel) process of a topology, started at once, in its own
    directory `name` under `directory`."""

    def __init__(self, directory: Path, name: str, *args: str, sentinel_conf: str | None = None,
                 with_bus: bool = False, unix_socket: bool = False, password: str | None = None):
        super().__init__(directory / name, *args, with_bus=with_bus, port=0 if unix_socket else None)
        self.password = password
        self.name = name
        self.unix_socket = str(self.directory / "redis.sock") if unix_socket else None
        self.sentinel_conf = None
        if sentinel_conf is not None:
            self.sentinel_conf = self.directory / "sentinel.conf"
            self.sentinel_conf.write_text(sentinel_conf)
        self.start()

    def command(self) -> list[str]:
        if self.sentinel_conf is not None:
            return [REDIS_SERVER, str(self.sentinel_conf), "--sentinel", *self.address_options()]
        command = [REDIS_SERVER, *self.address_options(), "--save", "", "--appendonly", "no",
                   "--repl-diskless-sync-delay", "0", *self.options]
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        if self.unix_socket:
            command += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        return command

    @property
    def url(self) -> str:
        return f"unix://{self.unix_socket}" if self.unix_socket else f"redis://127.0.0.1:{self.port}"

    def client(self, **options) -> redis.Redis:
        options.setdefault("password", self.password)
        if self.unix_socket:
            return redis.Redis(unix_socket_path=self.unix_socket, socket_timeout=2, **options)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **options)


@contextlib.contextmanager
def nodes_stopped_afterwards() -> Iterator[list[RedisNode]]:
    started: list[RedisNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


class SentinelGroup:
    """A master, one replica and three Sentinels with short timeouts (failover in seconds)."""

    def __init__(self, directory: Path, started: list[RedisNode], password: str | None = None):
        self.master = RedisNode(directory, "master", password=password)
        started.append(self.master)
        self.replica = RedisNode(
            directory, "replica", "--replicaof", "127.0.0.1", str(self.master.port), password=password
        )
        started.append(self.replica)
        conf = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            + (f"sentinel auth-pass {SERVICE} {password}\n" if password else "")
        )
        self.sentinels = [RedisNode(directory, f"sentinel{index}", sentinel_conf=conf) for index in range(3)]
        started.extend(self.sentinels)
        wait_until(self._ready, timeout=20, what="Sentinels to see each other and the replica")

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def _ready(self) -> bool:
        if self.master.client().info("replication").get("slave0", {}).get("state") != "online":
            return False
        for sentinel in self.sentinels:
            state = sentinel.client(decode_responses=True).sentinel_master(SERVICE)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
        return True

    def master_port(self) -> int:
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def wait_in_sync(self) -> None:
        """Until the replica has applied everything the master wrote."""
        master = self.master.client()
        wait_until(lambda: master.wait(1, 1000) >= 1, what="the replica to catch up")


class Cluster:
    """A Redis Cluster of masters (each with `replicas` replicas) created with
    `redis-cli --cluster create`."""

    def __init__(self, directory: Path, started: list[RedisNode], masters: int = 3, replicas: int = 0):
        self.nodes = []
        for index in range(masters * (1 + replicas)):
            node = RedisNode(
                directory, f"cluster{index}", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                with_bus=True,
            )
            started.append(node)
            self.nodes.append(node)
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_until(self._ready, timeout=20, what="the cluster to agree on its slots")

    def _ready(self) -> bool:
        for node in self.nodes:
            info = node.client().cluster("info")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
        return True

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def node_id(self, node: RedisNode) -> str:
        return node.client().cluster("myid").decode()

    def owner(self, slot: int) -> RedisNode:
        """The master that serves `slot`, as the first live node sees it."""
        for start, end, primary, *_ in self._live().client().cluster("slots"):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == int(primary[1]))
        raise AssertionError(f"no master owns slot {slot}")

    def _live(self) -> RedisNode:
        return next(node for node in self.nodes if node.process.poll() is None)

    def masters(self) -> list[RedisNode]:
        """The nodes serving slots now, as the first live node sees it."""
        ports = {int(primary[1]) for _start, _end, primary, *_ in self._live().client().cluster("slots")}
        return [node for node in self.nodes if node.port in ports]

    def slot_of(self, key: str) -> int:
        return int(self._live().client().cluster("keyslot", key))

    @contextlib.contextmanager
    def slot_moving(self, slot: int, target: RedisNode, keys_per_batch: int = 5,
                    pause_after: int = 1) -> Iterator[None]:
        """Moves `slot` to `target` in a thread, the way `redis-cli --cluster reshard` does
        (IMPORTING, MIGRATING, MIGRATE in batches, then SETSLOT NODE on every master), and
        yields while the move is paused half-way, after `pause_after` batches; on leaving,
        lets it finish."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        paused, go_on = threading.Event(), threading.Event()

        def move() -> None:
            target.client().cluster("setslot", slot, "importing", source_id)
            source.client().cluster("setslot", slot, "migrating", target_id)
            batches = 0
            while keys := source.client().cluster("getkeysinslot", slot, keys_per_batch):
                source.client().migrate("127.0.0.1", target.port, keys, 0, 5000)
                batches += 1
                if batches == pause_after:
                    paused.set()
                    go_on.wait(30)
            for node in self.masters():
                node.client().cluster("setslot", slot, "node", target_id)

        mover = threading.Thread(target=move)
        mover.start()
        try:
            assert paused.wait(30), f"slot {slot} moved in fewer than {pause_after} batches"
            yield
        finally:
            go_on.set()
            mover.join(30)

