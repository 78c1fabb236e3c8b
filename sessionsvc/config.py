"""Every setting of the service: its environment variable, its default and its parsing.

`Config.from_env()` reads the process environment once at start-up; tests build a
`Config` directly with the overrides they need. `Config.check()` refuses unsafe
production settings with a message naming the variable and the reason.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

KEY_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
CORS_ORIGIN_PATTERN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z")
# Bearer keys and secrets production accepts: at least this long (`generate-api-key` prints
# 43 characters), and none of the example values shown in deploy/ and the README.
MIN_SECRET_LENGTH = 32
# Shards of one store (SESSIONSVC_SHARDS): a whole-store read asks every one of them.
MAX_SHARDS = 256
EXAMPLE_SECRETS = frozenset({"change-me", "changeme", "change_me", "key1", "key2", "<key>"})
USER_LIMIT_POLICIES = ("evict_oldest", "reject")


class ConfigError(ValueError):
    """A setting is missing or unsafe; the message names the variable."""


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _int(value: str, name: str, minimum: int = 0) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
    return number


def _float(value: str, name: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be positive, got {number}")
    return number


def _list(value: str, name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Config:
    """Settings; field metadata names the environment variable that sets each one."""

    env: str = field(default="development", metadata={"env": "SESSIONSVC_ENV"})
    redis_url: str | None = field(default=None, metadata={"env": "SESSIONSVC_REDIS_URL"})
    redis_sentinels: tuple[str, ...] = field(
        default=(), metadata={"env": "SESSIONSVC_REDIS_SENTINELS", "parse": _list}
    )
    redis_sentinel_service: str = field(
        default="mymaster", metadata={"env": "SESSIONSVC_REDIS_SENTINEL_SERVICE"}
    )
    redis_cluster: bool = field(
        default=False, metadata={"env": "SESSIONSVC_REDIS_CLUSTER", "parse": _bool}
    )
    redis_sentinel_password: str | None = field(
        default=None, metadata={"env": "SESSIONSVC_REDIS_SENTINEL_PASSWORD"}
    )
    read_from_replicas: bool = field(
        default=False, metadata={"env": "SESSIONSVC_READ_FROM_REPLICAS", "parse": _bool}
    )
    min_replicas_ack: int = field(
        default=0, metadata={"env": "SESSIONSVC_MIN_REPLICAS_ACK", "parse": _int}
    )
    replica_ack_timeout_ms: int = field(
        default=500, metadata={"env": "SESSIONSVC_REPLICA_ACK_TIMEOUT_MS", "parse": _int}
    )
    redis_timeout_seconds: float = field(
        default=1.0, metadata={"env": "SESSIONSVC_REDIS_TIMEOUT_SECONDS", "parse": _float}
    )
    redis_max_connections: int = field(
        default=50, metadata={"env": "SESSIONSVC_REDIS_MAX_CONNECTIONS", "parse": _int}
    )
    encryption_keys: tuple[str, ...] = field(
        default=(), metadata={"env": "SESSIONSVC_ENCRYPTION_KEYS", "parse": _list}
    )
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"env": "SESSIONSVC_API_KEYS", "parse": _list}
    )
    metrics_keys: tuple[str, ...] = field(
        default=(), metadata={"env": "SESSIONSVC_METRICS_KEYS", "parse": _list}
    )
    client_id_secret: str | None = field(default=None, metadata={"env": "SESSIONSVC_CLIENT_ID_SECRET"})
    allow_public: bool = field(
        default=False, metadata={"env": "SESSIONSVC_ALLOW_PUBLIC", "parse": _bool}
    )
    key_prefix: str = field(default="sessionsvc", metadata={"env": "SESSIONSVC_KEY_PREFIX"})
    shards: int = field(default=1, metadata={"env": "SESSIONSVC_SHARDS", "parse": _int})
    retention_seconds: int = field(
        default=86400, metadata={"env": "SESSIONSVC_RETENTION_SECONDS", "parse": _int}
    )
    idempotency_seconds: int = field(
        default=86400, metadata={"env": "SESSIONSVC_IDEMPOTENCY_SECONDS", "parse": _int}
    )
    max_ttl_seconds: int = field(
        default=2592000, metadata={"env": "SESSIONSVC_MAX_TTL_SECONDS", "parse": _int}
    )
    max_body_bytes: int = field(
        default=64 * 1024, metadata={"env": "SESSIONSVC_MAX_BODY_BYTES", "parse": _int}
    )
    retry_after_seconds: int = field(
        default=1, metadata={"env": "SESSIONSVC_RETRY_AFTER_SECONDS", "parse": _int}
    )
    log_level: str = field(default="INFO", metadata={"env": "SESSIONSVC_LOG_LEVEL"})
    log_format: str = field(default="auto", metadata={"env": "SESSIONSVC_LOG_FORMAT"})
    cors_origins: tuple[str, ...] = field(
        default=(), metadata={"env": "SESSIONSVC_CORS_ORIGINS", "parse": _list}
    )
    rate_limit: str | None = field(default=None, metadata={"env": "SESSIONSVC_RATE_LIMIT"})
    auth_failures: str = field(default="30 per minute", metadata={"env": "SESSIONSVC_AUTH_FAILURES"})
    # AES-GCM with random 96-bit nonces stays within its collision bound for about 2**32
    # encryptions per key; past half of that, /readyz and the logs ask for a new key.
    rotate_key_after: int = field(
        default=2**31, metadata={"env": "SESSIONSVC_ROTATE_KEY_AFTER", "parse": _int}
    )
    # Session lifecycle: per-user limits, the event stream, the expiry sweeper.
    max_tokens_per_user: int = field(
        default=0, metadata={"env": "SESSIONSVC_MAX_TOKENS_PER_USER", "parse": _int}
    )
    user_limit_policy: str = field(default="evict_oldest", metadata={"env": "SESSIONSVC_USER_LIMIT_POLICY"})
    events_maxlen: int = field(default=100_000, metadata={"env": "SESSIONSVC_EVENTS_MAXLEN", "parse": _int})
    expiry_sweep: bool = field(default=True, metadata={"env": "SESSIONSVC_EXPIRY_SWEEP", "parse": _bool})
    # An event-stream response (Server-Sent Events) ends after this long; the client
    # reconnects with Last-Event-ID. Heartbeat comments keep proxies from closing it meanwhile.
    events_stream_seconds: int = field(
        default=300, metadata={"env": "SESSIONSVC_EVENTS_STREAM_SECONDS", "parse": _int}
    )
    events_heartbeat_seconds: float = field(
        default=15.0, metadata={"env": "SESSIONSVC_EVENTS_HEARTBEAT_SECONDS", "parse": _float}
    )
    # Event streams one process serves at once: each waiting one holds a Redis connection
    # of the process's pool, so they must leave most of the pool to requests.
    events_max_streams: int = field(
        default=32, metadata={"env": "SESSIONSVC_EVENTS_MAX_STREAMS", "parse": _int}
    )
    proxy_hops: int = field(default=0, metadata={"env": "SESSIONSVC_PROXY_HOPS", "parse": _int})
    # gunicorn's own variable (gunicorn.conf.py passes it on): the peers whose
    # X-Forwarded-* headers are believed.
    forwarded_allow_ips: tuple[str, ...] = field(
        default=("127.0.0.1", "::1"), metadata={"env": "FORWARDED_ALLOW_IPS", "parse": _list}
    )

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def embedded_store(self) -> bool:
        """No Redis configured: run on an in-process fakeredis (development only)."""
        return not self.redis_url and not self.redis_sentinels

    def trusted_proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        """FORWARDED_ALLOW_IPS as networks (an address is a network of one); None for `*`,
        which trusts every peer."""
        if "*" in self.forwarded_allow_ips:
            return None
        networks = []
        for entry in self.forwarded_allow_ips:
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError:
                raise ConfigError(
                    f"FORWARDED_ALLOW_IPS: expected comma-separated addresses or networks like "
                    f"'127.0.0.1,10.0.0.0/8', or '*', got {entry!r}"
                ) from None
        return tuple(networks)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        environ = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            name = setting.metadata["env"]
            raw = environ.get(name)
            if raw is None and name == "SESSIONSVC_REDIS_URL":
                raw = environ.get("REDIS_URL")
            if raw is None or not raw.strip():
                continue
            parse = setting.metadata.get("parse")
            values[setting.name] = parse(raw, name) if parse else raw.strip()
        return cls(**values)

    def check(self) -> None:
        """Raise ConfigError naming the first unsafe or invalid setting."""
        if self.env not in ("development", "production"):
            raise ConfigError(f"SESSIONSVC_ENV: expected development or production, got {self.env!r}")
        if not KEY_PREFIX_PATTERN.match(self.key_prefix):
            raise ConfigError(
                "SESSIONSVC_KEY_PREFIX: 1-64 characters of letters, digits, '_', '.', ':' or '-' "
                "(braces are added by the store to form the hash tag)"
            )
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(
                f"SESSIONSVC_SHARDS: 1 to {MAX_SHARDS} shards of the store, fixed when it is first written; "
                f"got {self.shards}"
            )
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(f"SESSIONSVC_LOG_FORMAT: expected auto, json or text, got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                f"SESSIONSVC_LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}"
            )
        if self.max_ttl_seconds < 1:
            raise ConfigError("SESSIONSVC_MAX_TTL_SECONDS: must be at least 1")
        if self.rate_limit:
            _check_limits("SESSIONSVC_RATE_LIMIT", self.rate_limit)
        _check_limits("SESSIONSVC_AUTH_FAILURES", self.auth_failures)
        for origin in self.cors_origins:
            if not CORS_ORIGIN_PATTERN.match(origin):
                raise ConfigError(
                    f"SESSIONSVC_CORS_ORIGINS: each entry must be one exact origin like "
                    f"'https://app.example.com' (never '*': tokens must not be readable by any "
                    f"site), got {origin!r}"
                )
        self._check_topology()
        self.trusted_proxies()  # a malformed entry raises ConfigError
        if self.idempotency_seconds < 1:
            raise ConfigError("SESSIONSVC_IDEMPOTENCY_SECONDS: must be at least 1")
        if self.user_limit_policy not in USER_LIMIT_POLICIES:
            raise ConfigError(
                f"SESSIONSVC_USER_LIMIT_POLICY: expected evict_oldest or reject, got {self.user_limit_policy!r}"
            )
        if self.events_maxlen < 1:
            raise ConfigError("SESSIONSVC_EVENTS_MAXLEN: must be at least 1")
        if self.events_stream_seconds < 1:
            raise ConfigError("SESSIONSVC_EVENTS_STREAM_SECONDS: must be at least 1")
        if self.production:
            if self.embedded_store:
                raise ConfigError(
                    "SESSIONSVC_REDIS_URL: production needs a real Redis; the embedded store "
                    "keeps tokens in one process's memory and loses them on restart"
                )
            if not self.encryption_keys:
                raise ConfigError(
                    "SESSIONSVC_ENCRYPTION_KEYS: production needs explicit encryption keys "
                    "(generate one with `flask --app wsgi generate-key`)"
                )
            if not self.api_keys and not self.allow_public:
                raise ConfigError(
                    "SESSIONSVC_API_KEYS: production refuses to serve a public token store; set "
                    "API keys, or SESSIONSVC_ALLOW_PUBLIC=true to accept the risk explicitly"
                )
            _check_secrets("SESSIONSVC_API_KEYS", self.api_keys)
            _check_secrets("SESSIONSVC_METRICS_KEYS", self.metrics_keys)
            _check_secrets("SESSIONSVC_CLIENT_ID_SECRET", (self.client_id_secret,) if self.client_id_secret else ())

    def _check_topology(self) -> None:
        scheme = (self.redis_url or "").partition("://")[0].lower()
        if self.redis_sentinels and self.redis_cluster:
            raise ConfigError("SESSIONSVC_REDIS_CLUSTER: Sentinel and Cluster exclude each other; set one")
        if (self.redis_sentinels or self.redis_cluster) and self.redis_url and scheme not in ("redis", "rediss"):
            raise ConfigError(
                "SESSIONSVC_REDIS_URL: with Sentinel or Cluster give a redis:// or rediss:// URL "
                f"(credentials, db, TLS), not {scheme}://"
            )
        if self.redis_cluster and not self.redis_url:
            raise ConfigError("SESSIONSVC_REDIS_URL: SESSIONSVC_REDIS_CLUSTER needs the URL of one cluster node")
        if self.read_from_replicas and not (self.redis_sentinels or self.redis_cluster):
            raise ConfigError(
                "SESSIONSVC_READ_FROM_REPLICAS: needs Sentinel or Cluster, which name the replicas; "
                "a single URL names none"
            )
        if self.min_replicas_ack and self.redis_cluster:
            raise ConfigError(
                "SESSIONSVC_MIN_REPLICAS_ACK: not supported on Redis Cluster (WAIT must reach the "
                "master of the store's slot on the write's own connection); use it with Sentinel"
            )
        if self.min_replicas_ack and self.replica_ack_timeout_ms >= self.redis_timeout_seconds * 1000:
            raise ConfigError(
                "SESSIONSVC_REPLICA_ACK_TIMEOUT_MS: must be below SESSIONSVC_REDIS_TIMEOUT_SECONDS, "
                "or the socket times out before WAIT answers"
            )


def shard_count_error(configured: int, recorded: int, key_prefix: str) -> ConfigError:
    """What a process configured with another number of shards than its store has says."""
    return ConfigError(
        f"SESSIONSVC_SHARDS: this process is configured with {configured} shard(s), but the store under "
        f"SESSIONSVC_KEY_PREFIX={key_prefix!r} was created with {recorded}; set SESSIONSVC_SHARDS={recorded} "
        "(the number of shards cannot change: record ids name their shard; see `flask --app wsgi reshard`)"
    )


def _check_limits(name: str, value: str) -> None:
    """Refuse what the `limits` library (flask-limiter's) cannot parse."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(
            f"{name}: expected limits like '100/second' or '1000 per minute; 50 per second', got {value!r}"
        ) from None


def _check_secrets(name: str, values: tuple[str, ...]) -> None:
    """Refuse guessable bearer keys or secrets, naming the variable and the entry's
    position, never the value."""
    for position, value in enumerate(values, start=1):
        if value.casefold() in EXAMPLE_SECRETS:
            problem = "is an example placeholder from the documentation"
        elif len(value) < MIN_SECRET_LENGTH:
            problem = f"is shorter than {MIN_SECRET_LENGTH} characters"
        else:
            continue
        raise ConfigError(
            f"{name}: entry {position} {problem}; production needs long random keys "
            "(generate one with `flask --app wsgi generate-api-key`)"
        )
