"""Operational endpoints: liveness and readiness (documented), the OpenAPI document and the
self-hosted Swagger UI."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, json, send_from_directory
from flask_smorest import Blueprint as ApiBlueprint
from swagger_ui_bundle import swagger_ui_path

from .apidoc import dated_examples
from .jsonprovider import MIMETYPE
from .schemas import Health, Readiness
from .store import StoreUnavailable

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

READY_EXAMPLE = {"status": "ok", "redis": "ok", "scripts": "loaded"}
NOT_READY_EXAMPLE = {"status": "unavailable", "redis": "connection", "scripts": "unknown"}


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
    store = current_app.extensions["sessionsvc"].store
    retry_after = {"Retry-After": str(current_app.config["SESSIONSVC"].retry_after_seconds)}
    try:
        store.ping()
    except StoreUnavailable as error:
        return {"status": "unavailable", "redis": error.kind, "scripts": "unknown"}, 503, retry_after
    try:
        store.load_scripts()
    except StoreUnavailable as error:
        return {"status": "unavailable", "redis": "ok", "scripts": error.kind}, 503, retry_after
    return READY_EXAMPLE


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
