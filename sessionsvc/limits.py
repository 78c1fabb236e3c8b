"""Request budgets and browser origins: rate limiting (flask-limiter) and CORS (flask-cors).

Rate limits count requests to ``/api/...`` per client: per API key when authentication
is on (keyed by the key's id, a hash, never the key), else per client address. The
counters live in the store's own Redis (the same connection pool, so the same timeouts,
TLS and credentials), so a limit holds across every process and host; with the embedded
store they live in process memory. If Redis stops answering, counting falls back to
process memory until it returns: a Redis outage is answered by the store (503), never by
the limiter.

Every limited response carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window resets, as the IETF RateLimit header
fields draft writes it); a 429 also carries ``Retry-After``.

Failed authentications are counted per client address the same way, in the same storage
(``FailedAuthentications``, used by ``sessionsvc.edge``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from flask_cors import CORS
from flask_limiter import Limiter
from limits import parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from .config import Config

log = logging.getLogger("sessionsvc")

EXPOSED_HEADERS = [
    "Location", "ETag", "X-Request-ID", "Retry-After",
    "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "If-Match"]


def client_identity() -> str:
    """Whose budget a request spends: its API key's id, or its address."""
    key_id = g.get("client_key_id")
    return f"key:{key_id}" if key_id else f"addr:{request.remote_addr or 'unknown'}"


def _not_limited() -> bool:
    return not request.path.startswith("/api/") or request.method == "OPTIONS"


def _storage(config: Config, redis_client: Any, purpose: str = "limits") -> tuple[str, dict[str, Any]]:
    """The `limits` storage URI and options for the store's Redis, its keys under
    ``<key_prefix>:<purpose>``."""
    if config.embedded_store:
        return "memory://", {}
    options: dict[str, Any] = {"key_prefix": f"{config.key_prefix}:{purpose}"}
    if config.redis_cluster:
        scheme, _, rest = (config.redis_url or "").partition("://")
        options.update(
            socket_timeout=config.redis_timeout_seconds,
            socket_connect_timeout=config.redis_timeout_seconds,
        )
        if scheme == "rediss":
            options["ssl"] = True
        return f"redis+cluster://{rest}", options
    # One pool for the store and the limiter: same server, timeouts, TLS and credentials.
    options["connection_pool"] = redis_client.connection_pool
    return "redis://", options


def install_rate_limits(app: Flask, config: Config, redis_client: Any) -> Limiter | None:
    """Apply SESSIONSVC_RATE_LIMIT to every /api request; None when it is unset."""
    if not config.rate_limit:
        return None
    storage_uri, storage_options = _storage(config, redis_client)
    limiter = Limiter(
        client_identity,
        application_limits=[config.rate_limit],
        application_limits_exempt_when=_not_limited,
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="fixed-window",
        headers_enabled=False,  # written below, with the RateLimit-* names and a delta Reset
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.init_app(app)

    @app.after_request
    def rate_limit_headers(response: Response) -> Response:
        current = limiter.current_limit
        if current is None:
            return response
        try:
            reset_time, remaining = current.window
            reset_in = max(0, math.ceil(reset_time - time.time()))
        except Exception as error:  # noqa: BLE001 - headers are a courtesy; never fail a response
            log.warning("rate limit headers unavailable", extra={"error_type": type(error).__name__})
            return response
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(remaining)
        response.headers["RateLimit-Reset"] = str(reset_in)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, reset_in))
        return response

    return limiter


# After a Redis error, failed authentications are counted in process memory for this long
# before Redis is tried again: during an outage one request in that time waits on Redis.
FALLBACK_SECONDS = 5.0


class FailedAuthentications:
    """Failed authentications per client address, against SESSIONSVC_AUTH_FAILURES.

    Counted by the `limits` library (fixed windows) in the store's Redis under
    ``<key_prefix>:authfail``, so every process and host spends one budget per address;
    with the embedded store, in process memory. If Redis errors, counting goes on in
    process memory for FALLBACK_SECONDS, then Redis is tried again: a Redis outage is
    answered by the store (503), never here.
    """

    def __init__(self, config: Config, redis_client: Any):
        self.limits = parse_many(config.auth_failures)
        storage_uri, storage_options = _storage(config, redis_client, "authfail")
        self.shared = FixedWindowRateLimiter(storage_from_string(storage_uri, wrap_exceptions=True, **storage_options))
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self.shared_again_at = 0.0  # time.monotonic() from which Redis is tried again

    def _counted(self, count: Callable[[FixedWindowRateLimiter], Any]) -> Any:
        if time.monotonic() >= self.shared_again_at:
            try:
                return count(self.shared)
            except StorageError as error:
                log.warning(
                    "failed authentications counted in process memory: Redis unavailable",
                    extra={"error_type": type(error.storage_error).__name__},
                )
                self.shared_again_at = time.monotonic() + FALLBACK_SECONDS
        return count(self.local)

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again; None while it is within its budget."""

        def wait(limiter: FixedWindowRateLimiter) -> int | None:
            for limit in self.limits:
                if not limiter.test(limit, address):
                    reset_time, _ = limiter.get_window_stats(limit, address)
                    return max(1, math.ceil(reset_time - time.time()))
            return None

        return self._counted(wait)

    def failed(self, address: str) -> None:
        """Spend one failure of `address`'s budget."""
        self._counted(lambda limiter: [limiter.hit(limit, address) for limit in self.limits])


def install_cors(app: Flask, config: Config) -> None:
    """Let the configured browser origins (and only those) call the API."""
    if not config.cors_origins:
        return
    CORS(
        app,
        resources={r"/api/*": {"origins": list(config.cors_origins)}},
        methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        supports_credentials=False,  # bearer keys, not cookies: no ambient credentials
        max_age=600,
    )


def install(app: Flask, config: Config, redis_client: Any) -> None:
    install_cors(app, config)
    install_rate_limits(app, config, redis_client)
