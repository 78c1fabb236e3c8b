"""Redis clients for each topology, and what Redis saying "not now" looks like.

Only the store package imports this module.
"""

from __future__ import annotations

from typing import Any

import redis
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

HEALTH_CHECK_SECONDS = 30

# Redis saying "not now" rather than "wrong"; the kind names the reason. The cluster kinds
# occur while the store's slot moves between masters or a master fails over. Typed errors
# first, most specific first (BusyLoadingError and MaxConnectionsError are ConnectionErrors
# too); redis-py strips the code from the message of the typed ones.
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

