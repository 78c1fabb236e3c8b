"""Redis clients for each topology, and what Redis saying "not now" looks like.

Only the store package imports this module.
"""

from __future__ import annotations

import select
import sys
from typing import Any

import redis
from redis._parsers import _HiredisParser
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from ..turns import turn_taker

HEALTH_CHECK_SECONDS = 30

# Replies meaning Redis cannot serve the command now; the kind names the reason. The
# cluster kinds occur while the store's slot moves between masters or a master fails over.


# Redis saying "not now" rather than "wrong". Typed errors first, most specific first
# (BusyLoadingError and MaxConnectionsError are ConnectionErrors too); redis-py strips
# the code from the message of the typed ones.
_UNAVAILABLE: tuple[tuple[type[Exception], str], ...] = (
    (BusyLoadingError, "loading"),
    (MaxConnectionsError, "pool_exhausted"),
    (ReadOnlyError, "read_only"),
    (OutOfMemoryError, "oom"),
    (MasterDownError, "masterdown"),
    (ClusterDownError, "clusterdown"),
    (TryAgainError, "tryagain"),
    (RedisTimeoutError, "timeout"),
    (RedisConnectionError, "connection"),
    (AskError, "migrating"),
    (ClusterError, "cluster"),
    (RedisClusterException, "cluster"),
)
_UNAVAILABLE_REPLIES = ("BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "NOREPLICAS", "MISCONF")



def unavailable_kind(error: Exception) -> str | None:
    for error_type, kind in _UNAVAILABLE:
        if isinstance(error, error_type):
            return kind
    if isinstance(error, ResponseError):
        text = str(error)
        if text.startswith(_UNAVAILABLE_REPLIES):
            return text.split(" ", 1)[0].lower()
        if "non local key" in text:
            # A script touched a key whose slot is being migrated (Redis aborts it there).
            return "migrating"
    return None


def _os_poll() -> Any:
    """`select.poll` as the OS gives it, also where gevent has patched the select module
    (None where there is none to be had: Windows, eventlet's green select)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("select", "poll")
    return getattr(select, "poll", None)


class ReadinessCheckingParser(_HiredisParser):
    """redis-py's hiredis parser with a cheaper check that a pooled connection is clean.

    Before each command the pool asks the connection whether anything waits to be read
    (``can_read(0)``: a reply left over, or the server gone). redis-py asks through
    ``select.poll``, which under gevent is gevent's: io watchers started and stopped on the
    event loop for one pass of it, ~20 µs a command under load (py-spy: ~6 % of a GET's
    CPU). A zero-timeout poll never blocks, so the OS's own answers the usual case,
    nothing buffered and nothing to read, in about a microsecond, and under gevent the
    loop still gets its pass (``sessionsvc.turns``). Every other case (a buffered reply, a
    readable socket, TLS with its own buffer, a timeout) goes to redis-py's check as
    before."""

    def __init__(self, socket_read_size: int):
        super().__init__(socket_read_size)
        self._os_poll = _os_poll()
        self._take_turn = turn_taker()

    def can_read(self, timeout: float = 0) -> bool:
        sock, reader = self._sock, self._reader
        if (
            timeout == 0 and self._os_poll is not None and sock is not None and reader
            and not hasattr(sock, "pending") and not reader.has_data()
        ):
            poller = self._os_poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                if self._take_turn is not None:
                    self._take_turn()
                return False
        return super().can_read(timeout)


def _node_options(redis_url: str | None) -> dict[str, Any]:
    """Credentials, db and TLS settings of a redis:// or rediss:// URL, without its address
    (Sentinel finds the address; the URL says how to log in)."""
    if not redis_url:
        return {}
    options = redis.connection.parse_url(redis_url)
    for address_part in ("host", "port", "path"):
        options.pop(address_part, None)
    if options.pop("connection_class", None) is redis.connection.SSLConnection:
        options["ssl"] = True
    return options


def connect(
    redis_url: str | None,
    *,
    timeout_seconds: float = 1.0,
    max_connections: int = 50,
    sentinels: tuple[str, ...] = (),
    sentinel_service: str = "mymaster",
    sentinel_password: str | None = None,
    cluster: bool = False,
    read_from_replicas: bool = False,
) -> tuple[Any, Any | None]:
    """Redis clients for the configured topology: (primary, replicas). ``replicas`` is
    where read-only scripts go when reads may use replicas, else None. With no Redis
    configured, the primary is an in-process fakeredis.

    Timeouts are short and explicit (and well below gunicorn's worker timeout) so a dead
    or stalled Redis gives a quick 503 instead of a hung worker; TCP keepalive and a PING
    on connections idle for ``health_check_interval`` seconds find dead peers before a
    request does. The pool is bounded and raises ``MaxConnectionsError`` at once when
    exhausted (a blocking pool would queue requests behind a slow Redis). The client
    retries nothing (a repeated script could apply twice): ``TokenStore`` retries what is
    safe to repeat.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
    }
    if HIREDIS_AVAILABLE:
        options["parser_class"] = ReadinessCheckingParser
    if redis_url is None and not sentinels:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer()), None
    if sentinels:
        from redis.sentinel import Sentinel

        node_options = _node_options(redis_url)
        tls = {name: value for name, value in node_options.items() if name.startswith("ssl")}
        addresses = [(host, int(port)) for host, _, port in (item.rpartition(":") for item in sentinels)]
        sentinel = Sentinel(
            addresses,
            sentinel_kwargs={
                "socket_timeout": timeout_seconds,
                "socket_connect_timeout": timeout_seconds,
                "password": sentinel_password,
                **tls,
            },
        )
        primary = sentinel.master_for(sentinel_service, **node_options, **options)
        replicas = sentinel.slave_for(sentinel_service, **node_options, **options) if read_from_replicas else None
        return primary, replicas
    if cluster:
        from redis.cluster import LoadBalancingStrategy, RedisCluster

        options.pop("health_check_interval")
        if read_from_replicas:
            # Only read-only commands (EVALSHA_RO here) are balanced over the replicas.
            options["load_balancing_strategy"] = LoadBalancingStrategy.ROUND_ROBIN_REPLICAS
        client = RedisCluster.from_url(redis_url, **options)
        return client, client if read_from_replicas else None
    if redis_url.startswith("unix:"):
        options.pop("socket_keepalive")  # a TCP option: the socket connection refuses it
    return redis.Redis.from_url(redis_url, **options), None

