"""Operational endpoints: liveness and readiness (documented), the OpenAPI document and the
self-hosted Swagger UI."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from time import monotonic
from typing import Any

from flask import Blueprint, current_app, json, send_from_directory
from flask_smorest import Blueprint as ApiBlueprint
from swagger_ui_bundle import swagger_ui_path

from .apidoc import dated_examples
from .jsonprovider import MIMETYPE
from .schemas import Health, Readiness
from .vault import TokenVault

log = logging.getLogger("sessionsvc")

health = ApiBlueprint("health", __name__, description="Liveness and readiness probes; never authenticated.")
docs = Blueprint("docs", __name__)

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sessionsvc API</title>
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

DOCS_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false
});
"""

READY_EXAMPLE = {"status": "ok", "redis": "ok", "scripts": "loaded", "encryption_key": "ok"}
NOT_READY_EXAMPLE = {"status": "unavailable", "redis": "connection", "scripts": "unknown", "encryption_key": "unknown"}
# While the encrypting key is past its budget, a warning at most this often per process.
ROTATE_WARNING_SECONDS = 3600.0
# How long one process reuses its last readiness check: /readyz is open to anyone, and
# however often it is asked, Redis sees at most one check per process in that time.
READINESS_SECONDS = 1.0


class Reused:
    """The value of `compute`, reused by this process for `seconds` and computed by one
    caller at a time (the others wait for it): for open or scraped endpoints whose
    answer costs Redis work, so that asking often costs Redis nothing more. `compute`
    returns its failures as values; an exception it raises is not kept."""

    def __init__(self, compute: Callable[[], Any], seconds: float):
        self.compute = compute
        self.seconds = seconds
        self.lock = threading.Lock()
        self.value: Any = None
        self.fresh_until = float("-inf")

    def __call__(self) -> Any:
        with self.lock:
            if monotonic() >= self.fresh_until:
                self.value = self.compute()
                self.fresh_until = monotonic() + self.seconds
            return self.value


class RotationReminder:
    """Logs that the encrypting key is past its budget: at once, then at most once per
    ROTATE_WARNING_SECONDS (one per app, so a process's probes do not flood the log)."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def __call__(self, key_id: str, encryptions: int, rotate_key_after: int) -> None:
        if monotonic() - self.last < ROTATE_WARNING_SECONDS:
            return
        self.last = monotonic()
        log.warning(
            "the encrypting key has sealed more tokens than SESSIONSVC_ROTATE_KEY_AFTER: add a new key "
            "and rotate (README, Encryption keys)",
            extra={"event": "rotate_encryption_key", "key_id": key_id, "encryptions": encryptions,
                   "rotate_key_after": rotate_key_after},
        )


def readiness(vault: TokenVault, rotate_key_after: int, remind: RotationReminder) -> tuple[dict, int]:
    """/readyz's body and status: ready while Redis answers and holds the store's scripts;
    `encryption_key: rotate` (still ready) once the encrypting key has sealed more tokens
    than SESSIONSVC_ROTATE_KEY_AFTER."""
    check = vault.readiness()
    if not check.ready:
        return {**NOT_READY_EXAMPLE, "redis": check.redis, "scripts": check.scripts}, 503
    if check.encryptions is None:
        return {**READY_EXAMPLE, "encryption_key": "unknown"}, 200
    if check.encryptions <= rotate_key_after:
        return READY_EXAMPLE, 200
    remind(check.key_id, check.encryptions, rotate_key_after)
    return {**READY_EXAMPLE, "encryption_key": "rotate"}, 200


@health.record_once
def reuse_readiness(state) -> None:
    """Give the app its reused readiness check (the store is looked up when it runs)."""
    app = state.app
    remind = RotationReminder()
    app.extensions["sessionsvc.readiness"] = Reused(
        lambda: readiness(app.extensions["sessionsvc"], app.config["SESSIONSVC"].rotate_key_after, remind),
        READINESS_SECONDS,
    )


@health.route("/healthz", methods=["GET"])
@health.doc(operationId="getHealth")
@health.response(200, Health, example={"status": "ok"})
def healthz():
    """Liveness: the process answers; Redis is not consulted."""
    return {"status": "ok"}


@health.route("/readyz", methods=["GET"])
@health.doc(operationId="getReadiness")
@health.response(200, Readiness, example=READY_EXAMPLE)
@health.alt_response(
    503,
    schema=Readiness,
    description="Redis does not answer, or cannot run the store's scripts.",
    example=NOT_READY_EXAMPLE,
    headers={"Retry-After": {"description": "Seconds to wait before asking again.", "schema": {"type": "integer"}}},
)
def readyz():
    """Readiness: Redis answers PING within the client timeout and holds the store's scripts."""
    body, status = current_app.extensions["sessionsvc.readiness"]()
    if status == 200:
        return body
    return body, status, {"Retry-After": str(current_app.config["SESSIONSVC"].retry_after_seconds)}


@docs.get("/openapi.json")
def openapi_document():
    """The OpenAPI document flask-smorest built (what `flask openapi write` writes), its
    example times dated to now, so that the examples "Try it out" sends are accepted."""
    api = current_app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    document = dated_examples(api.spec.to_dict(), time.time(), current_app.config["SESSIONSVC"].max_ttl_seconds)
    return current_app.response_class(json.dumps(document, indent=2), mimetype=MIMETYPE)


@docs.get("/docs")
def docs_page():
    return DOCS_PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@docs.get("/docs/init.js")
def docs_init():
    return DOCS_INIT, 200, {"Content-Type": "application/javascript"}


@docs.get("/docs/assets/<path:filename>")
def docs_assets(filename: str):
    return send_from_directory(str(swagger_ui_path), filename, max_age=3600)
