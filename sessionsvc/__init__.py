"""sessionsvc: a session-token vault on Redis, encrypted at rest."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from inspect import iscoroutinefunction
from types import FunctionType, MethodType
from typing import Any

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from . import logs
from .config import Config, shard_count_error
from .crypto import generate_key

log = logging.getLogger("sessionsvc")

DEV_KEYS_FILE = "dev-encryption-keys"


# How many functions ServiceFlask remembers as synchronous (a bound: views, hooks and
# decorators' wrappers are a few dozen; anything made per request must not grow it).
SYNCHRONOUS_CACHED = 4096


class NoSessions(SessionInterface):
    """No cookie sessions: the API keeps nothing about a client in cookies, and sets no
    SECRET_KEY, so Flask's own interface opens a new `NullSession` for every request.
    This one hands every request the same NullSession (which refuses to be written, as
    Flask's does), and never saves it."""

    def __init__(self) -> None:
        self.null = self.null_session_class()

    def open_session(self, app: Flask, request: Any) -> NullSession:
        return self.null

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


class ServiceFlask(Flask):
    """Flask, remembering which functions are plain ``def`` s, and without cookie sessions
    (`NoSessions`, through Flask's `session_interface`).

    Flask asks `ensure_sync` about every hook, view and decorator layer of every request
    (a dozen or more), and `inspect.iscoroutinefunction` works its answer out afresh each
    time. Here the answer for a function (or a bound method's function) is kept; anything
    else, and any coroutine function, goes to Flask's own `ensure_sync`, the method Flask
    documents for overriding."""

    session_interface = NoSessions()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._synchronous: set[FunctionType] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        target = func.__func__ if type(func) is MethodType else func
        if type(target) is FunctionType:
            if target in self._synchronous:
                return func
            if not iscoroutinefunction(target):
                if len(self._synchronous) >= SYNCHRONOUS_CACHED:
                    self._synchronous.clear()
                self._synchronous.add(target)
                return func
        return super().ensure_sync(func)


def development_keys(instance_path: str) -> tuple[str, ...]:
    """Keys generated once into the instance folder, shared by every worker."""
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, DEV_KEYS_FILE)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(generate_key("dev") + "\n")
        log.warning("generated a development encryption key into %s", path)
    with open(path) as handle:
        return tuple(line.strip() for line in handle if line.strip())


def create_app(config: Config | Mapping[str, str] | None = None, redis_client: Any = None) -> Flask:
    """Build the app. `config` is a Config, or a mapping of SESSIONSVC_* variables; by
    default the process environment is read. `redis_client` overrides the connection."""
    # Imported here, not at the top: gunicorn's master imports sessionsvc.logs for its
    # logging setup and must not import redis before a gevent worker patches sockets.
    from . import cli, edge, limits, metrics, turns
    from .api import RecordIdConverter, blp
    from .apidoc import RECORD_ID_SCHEMA, state_expiry_rule
    from .crypto import Cipher
    from .errors import ServiceApi, register_error_handlers
    from .eventstream import StreamSlots
    from .jsonprovider import OrjsonProvider
    from .ops import docs, health
    from .store import ShardCountMismatch, check_shard_count, connect, open_store
    from .sweeper import ExpirySweeper
    from .vault import TokenVault

    if config is None:
        config = Config.from_env()
    elif not isinstance(config, Config):
        config = Config.from_env(config)
    config.check()

    app = ServiceFlask(__name__, instance_relative_config=True)
    logs.install(app, config)
    app.json = OrjsonProvider(app)
    app.config.update(
        SESSIONSVC=config,
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        API_TITLE="sessionsvc",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        # No OPENAPI_URL_PREFIX: ops.docs serves /openapi.json (dated examples) and /docs.
    )

    keys = config.encryption_keys or development_keys(app.instance_path)
    client, replicas = (redis_client, None) if redis_client is not None else connect(
        config.redis_url,
        timeout_seconds=config.redis_timeout_seconds,
        max_connections=config.redis_max_connections,
        sentinels=config.redis_sentinels,
        sentinel_service=config.redis_sentinel_service,
        sentinel_password=config.redis_sentinel_password,
        cluster=config.redis_cluster,
        read_from_replicas=config.read_from_replicas,
    )
    if config.embedded_store and redis_client is None:
        log.warning(
            "NO REDIS CONFIGURED: serving from an embedded in-process store (fakeredis). "
            "Tokens live in this one process and vanish when it stops. "
            "Set SESSIONSVC_REDIS_URL for anything but a local trial."
        )
    store = open_store(
        client,
        config.key_prefix,
        config.retention_seconds,
        config.shards,
        idempotency_seconds=config.idempotency_seconds,
        replicas=replicas,
        min_replicas_ack=config.min_replicas_ack,
        replica_ack_timeout_ms=config.replica_ack_timeout_ms,
        max_tokens_per_user=config.max_tokens_per_user,
        user_limit_policy=config.user_limit_policy,
        events_maxlen=config.events_maxlen,
        observe=turns.observing_waits(metrics.observe_store),
    )
    vault = TokenVault(store, Cipher(keys), layout_check=partial(check_shard_count, client, config.key_prefix,
                                                                config.shards))
    try:
        layout_checked = vault.check_layout()
    except ShardCountMismatch as error:
        raise shard_count_error(error.configured, error.recorded, config.key_prefix) from None
    if not layout_checked:
        log.warning("Redis did not answer at start-up: SESSIONSVC_SHARDS is checked against the store before "
                    "the first write and by /readyz")
    app.extensions["sessionsvc"] = vault
    app.extensions["sessionsvc.event_streams"] = StreamSlots(config.events_max_streams)
    if config.expiry_sweep:
        sweeper = ExpirySweeper(store)
        app.extensions["sessionsvc.sweeper"] = sweeper
        sweeper.start()

    api = ServiceApi(app)
    app.url_map.converters["record_id"] = RecordIdConverter
    api.register_converter(RecordIdConverter, lambda converter: RECORD_ID_SCHEMA)
    api.register_blueprint(blp)
    api.register_blueprint(health)
    state_expiry_rule(api.spec, config.max_ttl_seconds)
    if config.api_keys:
        edge.declare_bearer_auth(api)
    app.register_blueprint(docs)
    register_error_handlers(app)
    metrics.install(app)
    edge.install(app, config, client)
    limits.install(app, config, client)  # after edge: budgets are spent per authenticated key
    turns.install(app)  # outermost: a request's turn comes before anything else it does
    cli.register(app)
    return app
