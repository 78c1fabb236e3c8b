"""What every request passes through: the path alias, request ids, authentication and
response headers. Nothing here knows about tokens beyond keeping them out of caches."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import re
from typing import Any

from flask import Flask, g, request
from flask_smorest import Api, abort
from werkzeug.middleware.proxy_fix import ProxyFix

from .api import PREFIX
from .config import Config
from .errors import ERROR_RESPONSES
from .limits import FailedAuthentications
from .logs import REQUEST_ID_ENVIRON_KEY
from .metrics import METRICS_PATH

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
# What Swagger UI needs, no more (checked in a browser by tests/test_docs_browser.py): its
# own script, stylesheet and API calls, and data: images (the icons in its stylesheet).
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
BEARER_SCHEME = "bearerAuth"
CLIENT_ID_SECRET_LABEL = b"sessionsvc client id secret"
API_KEY_REQUIRED = ERROR_RESPONSES[401][1]
METRICS_KEY_REQUIRED = "A valid API key or metrics key is required (Authorization: Bearer <key>)."
TOO_MANY_FAILURES = "Too many failed authentications from this address; retry after the seconds in Retry-After."


class DoubledPrefixAlias:
    """Serves the contract's doubled paths (``PREFIX + PREFIX + ...``) by one rewrite."""

    def __init__(self, wsgi_app, prefix: str = PREFIX):
        self.wsgi_app = wsgi_app
        self.doubled = prefix + prefix
        self.prefix_length = len(prefix)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.doubled) and (len(path) == len(self.doubled) or path[len(self.doubled)] == "/"):
            environ["PATH_INFO"] = path[self.prefix_length :]
        return self.wsgi_app(environ, start_response)


def request_id_of(environ: dict) -> str:
    """The request's id: the client's X-Request-ID when it is sane, else a new one (kept
    in the environ, so every layer sees the same)."""
    request_id = environ.get(REQUEST_ID_ENVIRON_KEY)
    if request_id is None:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if incoming and REQUEST_ID_PATTERN.match(incoming) else os.urandom(16).hex()
        environ[REQUEST_ID_ENVIRON_KEY] = request_id
    return request_id


def _fixed_headers(csp: str, cache: bool = True) -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
    """The headers every response of one kind of path carries, and the (lower-case) names
    they replace in the app's own, X-Request-ID included."""
    headers = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
               ("Content-Security-Policy", csp)]
    if cache:
        headers.append(("Cache-Control", "no-store"))
    return tuple(headers), frozenset({"x-request-id", *(name.lower() for name, _ in headers)})


API_HEADERS = _fixed_headers(API_CSP)
DOCS_HEADERS = _fixed_headers(DOCS_CSP)
DOCS_ASSET_HEADERS = _fixed_headers(DOCS_CSP, cache=False)  # Swagger UI's files may be cached


class ResponseHeaders:
    """Gives every request its id and every response the headers all of them carry
    (replacing any the app set under the same names).

    At the WSGI layer rather than in Flask hooks: the same few tuples for every response
    are appended as they are, without werkzeug's header objects.
    The id is ``environ[REQUEST_ID_ENVIRON_KEY]`` (``sessionsvc.logs.request_id()`` in the app).
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/docs"):
            fixed = DOCS_ASSET_HEADERS if path.startswith("/docs/assets/") else DOCS_HEADERS
        else:
            fixed = API_HEADERS
        fixed_headers, replaced = fixed
        added = [("X-Request-ID", request_id_of(environ)), *fixed_headers]

        def start_with_headers(status, headers, exc_info=None):
            kept = [header for header in headers if header[0].lower() not in replaced]
            return start_response(status, kept + added, exc_info)

        return self.wsgi_app(environ, start_with_headers)


class TrustedProxies:
    """Takes the client's address and scheme from X-Forwarded-For and X-Forwarded-Proto
    (werkzeug's ProxyFix, `hops` proxies deep) only when the connecting peer is one of
    the trusted proxies (FORWARDED_ALLOW_IPS; None trusts every peer). From any other
    peer those headers are the client's own words and are ignored: it cannot pick the
    address its budgets are counted under."""

    def __init__(self, wsgi_app, hops: int, networks: tuple | None):
        self.direct = wsgi_app
        self.proxied = ProxyFix(wsgi_app, x_for=hops, x_proto=hops)
        self.networks = networks
        self.trusted = functools.lru_cache(maxsize=1024)(self._trusted)  # mostly the few proxies; bounded

    def _trusted(self, peer: str) -> bool:
        if self.networks is None:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket's peer: a local process, trusted as gunicorn trusts it
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # an IPv4 peer of a dual-stack socket
        return any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        trusted = "REMOTE_ADDR" in environ and self.trusted(environ["REMOTE_ADDR"])
        return (self.proxied if trusted else self.direct)(environ, start_response)


def declare_bearer_auth(api: Api) -> None:
    """Declare the bearer scheme in the OpenAPI document (Swagger UI's Authorize button)."""
    api.spec.components.security_scheme(
        BEARER_SCHEME,
        {"type": "http", "scheme": "bearer", "description": "An API key from SESSIONSVC_API_KEYS."},
    )
    api.spec.options["security"] = [{BEARER_SCHEME: []}]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def client_id_secret(config: Config) -> bytes:
    """The key of client ids: SESSIONSVC_CLIENT_ID_SECRET, else one derived from the whole
    set of API keys, so every host with the same configuration derives the same."""
    if config.client_id_secret:
        return config.client_id_secret.encode()
    joined = ",".join(sorted(config.api_keys)).encode()  # a comma never occurs in a key
    return hmac.new(CLIENT_ID_SECRET_LABEL, joined, "sha256").digest()


def client_id(secret: bytes, api_key: str) -> str:
    """An API key's id in rate-limit counters, audit lines and idempotency scopes: keyed
    with a server secret, so whoever reads Redis or the logs cannot test key guesses
    against it; 32 hex characters (128 bits)."""
    return hmac.new(secret, api_key.encode(), "sha256").hexdigest()[:32]


def install(app: Flask, config: Config, redis_client: Any) -> None:
    app.wsgi_app = ResponseHeaders(DoubledPrefixAlias(app.wsgi_app))
    if config.proxy_hops:
        # The client address (rate limits, logs) is the one the trusted proxies saw; with no
        # proxies configured, X-Forwarded-For is ignored, since any client can write it.
        app.wsgi_app = TrustedProxies(app.wsgi_app, config.proxy_hops, config.trusted_proxies())
    # Digests are compared, so the comparison takes the same time whatever the lengths.
    # Each API key's client id is worked out once, here; a metrics key names no client.
    secret = client_id_secret(config)
    api_keys = tuple((_digest(key.encode()), client_id(secret, key)) for key in config.api_keys)
    scraper_keys = api_keys + tuple((_digest(key.encode()), "") for key in config.metrics_keys)
    if not scraper_keys:
        return  # public mode: nothing to authenticate, no failures to count
    failures = FailedAuthentications(config, redis_client)

    @app.before_request
    def authenticate():
        if request.path.startswith("/api/"):
            keys, message = api_keys, API_KEY_REQUIRED
        elif request.path == METRICS_PATH:
            keys, message = scraper_keys, METRICS_KEY_REQUIRED
        else:
            return
        # A CORS preflight carries no credentials by design and reveals nothing.
        if not keys or request.method == "OPTIONS":
            return
        # An address past its budget of failures learns nothing more, not even whether
        # the key it sends now is right.
        address = request.remote_addr or "unknown"
        retry_after = failures.retry_after(address)
        if retry_after is not None:
            abort(429, message=TOO_MANY_FAILURES, headers={"Retry-After": str(retry_after)})
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        presented_digest = _digest(presented.strip().encode("utf-8", "replace"))
        matched = None
        for key_digest, key_id in keys:  # every key compared, in constant time
            if hmac.compare_digest(presented_digest, key_digest):
                matched = key_id
        if scheme.lower() != "bearer" or matched is None:
            failures.failed(address)
            abort(401, message=message, headers={"WWW-Authenticate": 'Bearer realm="sessionsvc"'})
        if matched:
            g.client_key_id = matched
