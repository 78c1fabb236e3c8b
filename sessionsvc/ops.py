"""Operational endpoints: liveness, readiness and the self-hosted Swagger UI."""

from __future__ import annotations

from flask import Blueprint, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from .store import StoreUnavailable

ops = Blueprint("ops", __name__)

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sessionsvc API</title>
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


@ops.get("/healthz")
def healthz():
    """Liveness: the process answers; Redis is not consulted."""
    return {"status": "ok"}


@ops.get("/readyz")
def readyz():
    """Readiness: Redis answers PING within the client timeout."""
    try:
        current_app.extensions["sessionsvc"].store.ping()
    except StoreUnavailable as error:
        return {"status": "unavailable", "redis": error.kind}, 503, {"Retry-After": "1"}
    return {"status": "ok", "redis": "ok"}


@ops.get("/docs")
def docs():
    return DOCS_PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@ops.get("/docs/init.js")
def docs_init():
    return DOCS_INIT, 200, {"Content-Type": "application/javascript"}


@ops.get("/docs/assets/<path:filename>")
def docs_assets(filename: str):
    return send_from_directory(str(swagger_ui_path), filename, max_age=3600)
