"""sessionsvc: a session-token vault on Redis, encrypted at rest."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from flask import Flask

from . import cli, edge
from .api import RECORD_ID_SCHEMA, RecordIdConverter, blp
from .config import Config
from .crypto import Cipher, generate_key
from .errors import ServiceApi, register_error_handlers
from .ops import ops
from .store import TokenStore, connect
from .vault import TokenVault

log = logging.getLogger("sessionsvc")

DEV_KEYS_FILE = "dev-encryption-keys"


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
    if config is None:
        config = Config.from_env()
    elif not isinstance(config, Config):
        config = Config.from_env(config)
    config.check()

    app = Flask(__name__, instance_relative_config=True)
    app.json.sort_keys = False
    app.config.update(
        SESSIONSVC=config,
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        API_TITLE="sessionsvc",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
    )

    keys = config.encryption_keys or development_keys(app.instance_path)
    client = redis_client if redis_client is not None else connect(
        config.redis_url,
        timeout_seconds=config.redis_timeout_seconds,
        max_connections=config.redis_max_connections,
        sentinels=config.redis_sentinels,
        sentinel_service=config.redis_sentinel_service,
        cluster=config.redis_cluster,
    )
    if config.embedded_store and redis_client is None:
        log.warning(
            "NO REDIS CONFIGURED: serving from an embedded in-process store (fakeredis). "
            "Tokens live in this one process and vanish when it stops. "
            "Set SESSIONSVC_REDIS_URL for anything but a local trial."
        )
    store = TokenStore(client, config.key_prefix, config.retention_seconds, config.idempotency_seconds)
    app.extensions["sessionsvc"] = TokenVault(store, Cipher(keys))

    api = ServiceApi(app)
    app.url_map.converters["record_id"] = RecordIdConverter
    api.register_converter(RecordIdConverter, lambda converter: RECORD_ID_SCHEMA)
    api.register_blueprint(blp)
    app.register_blueprint(ops)
    register_error_handlers(app)
    edge.install(app, config.api_keys)
    cli.register(app)
    return app
