"""What operators read: health, readiness, metrics, log formatting. Each app test runs on
fakeredis and on the private redis-server (the OpenAPI document: test_openapi.py)."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import runpy
import sys
import types
from pathlib import Path

import pytest
from pythonjsonlogger.orjson import OrjsonFormatter

from conftest import API, TEST_KEYS, user_root
from redis_server import free_port
from sessionsvc import create_app, metrics, ops
from sessionsvc.config import Config
from sessionsvc.logs import JsonFormatter, RequestContext, TextFormatter, human_readable
from sessionsvc.store.scripts import SCRIPTS

ROOT = Path(__file__).resolve().parent.parent


def metric(body: str, name: str, **labels: str) -> float | None:
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = "^" + re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" (\S+)$"
    found = re.search(pattern, body, re.MULTILINE)
    return float(found.group(1)) if found else None


# --- health -----------------------------------------------------------------------------


def test_healthz_and_readyz_answer_json(client):
    assert client.get("/healthz").json == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "redis": "ok", "scripts": "loaded", "encryption_key": "ok"}


def test_readyz_loads_scripts_redis_has_lost(client, raw):
    raw.script_flush()
    vault = client.application.extensions["sessionsvc"]
    assert vault.store.load_scripts() == len(SCRIPTS)
    raw.script_flush()
    assert client.get("/readyz").json["scripts"] == "loaded"
    assert vault.store.load_scripts() == 0


def counting(monkeypatch, target, name: str) -> list[int]:
    """Count calls of `target.name` (still calling it)."""
    calls: list[int] = []
    original = getattr(target, name)
    monkeypatch.setattr(target, name, lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    return calls


def test_repeated_readiness_probes_check_redis_once_per_interval(app, monkeypatch):
    store = app.extensions["sessionsvc"].store
    pings, loads = counting(monkeypatch, store, "ping"), counting(monkeypatch, store, "load_scripts")
    client = app.test_client()
    assert [client.get("/readyz").json["status"] for _ in range(5)] == ["ok"] * 5
    assert (len(pings), len(loads)) == (1, 1)
    later = ops.monotonic() + ops.READINESS_SECONDS
    monkeypatch.setattr(ops, "monotonic", lambda: later)
    assert client.get("/readyz").status_code == 200
    assert (len(pings), len(loads)) == (2, 2)


# --- metrics ----------------------------------------------------------------------------


def script_calls(raw) -> int:
    return sum(stats["calls"] for name, stats in raw.info("commandstats").items() if name.startswith("cmdstat_eval"))


def test_repeated_scrapes_run_the_census_script_once_per_interval(app, backend, shards, monkeypatch):
    census = counting(monkeypatch, app.extensions["sessionsvc"], "census")
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # loads the scripts: a new server's NOSCRIPT is not counted
    scripts_before = script_calls(backend["raw"]) if backend["kind"] == "redis" else None
    for _ in range(3):
        assert metric(client.get("/metrics").get_data(as_text=True), "sessionsvc_store_up") == 1
    assert len(census) == 1
    if scripts_before is not None:
        assert script_calls(backend["raw"]) == scripts_before + shards  # once on each shard
    later = ops.monotonic() + metrics.CENSUS_SECONDS
    monkeypatch.setattr(ops, "monotonic", lambda: later)
    assert metric(client.get("/metrics").get_data(as_text=True), "sessionsvc_records") == 0
    assert len(census) == 2


def test_metrics_count_requests_by_route_template_and_store_figures(client, save, raw, shards):
    first = save(user_id="usr_metrics")
    save(user_id="usr_metrics")
    client.get(f"{API}/{first['id']}")
    client.get(f"{API}/store_999")
    # An index entry whose death has passed is pruned (and counted) by the next save.
    raw.zadd(user_root("usr_other", shards) + ":exp:0", {"77:usr_gone": 1})
    save(user_id="usr_other")

    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "sessionsvc_http_requests_total", method="GET", route=API + "/<record_id>", status="200") >= 1
    assert metric(body, "sessionsvc_http_requests_total", method="GET", route=API + "/<record_id>", status="404") >= 1
    assert metric(body, "sessionsvc_store_operation_duration_seconds_count", operation="create") >= 3
    assert metric(body, "sessionsvc_records") == 3
    assert metric(body, "sessionsvc_records_by_key_id", key_id="test") == 3
    assert metric(body, "sessionsvc_index_entries_pruned_total") == 1
    assert metric(body, "sessionsvc_store_up") == 1
    assert "usr_metrics" not in body and "store_001" not in body and first["token_preview"] not in body


def test_metrics_count_redis_errors_by_kind_and_still_answer_when_redis_is_down(tmp_path):
    app = create_app(Config(encryption_keys=TEST_KEYS, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.instance_path = str(tmp_path)
    client = app.test_client()
    before = metric(client.get("/metrics").get_data(as_text=True), "sessionsvc_redis_errors_total", kind="connection")
    assert client.get(API).status_code == 503
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "sessionsvc_store_up") == 0
    assert metric(body, "sessionsvc_redis_errors_total", kind="connection") >= (before or 0) + 2


def test_records_per_key_id_is_scaled_from_a_sample_when_the_store_is_large(vault):
    cipher = vault.cipher
    for number in range(1, 301):
        vault.store.create(number, "usr_bulk", cipher.seal("t" * 30, f"store_{number:03d}", "usr_bulk"), "...", 2**31)
    census = vault.census()
    assert census.records == 300
    assert census.by_key_id == {"test": 300}


# --- log formatting ---------------------------------------------------------------------


def test_app_log_lines_carry_the_request_context(client, save):
    record = save(user_id="usr_logctx")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContext())
    logger = logging.getLogger("sessionsvc.audit")  # an app logger that writes during requests
    logger.addHandler(handler)
    try:
        client.get(f"{API}/{record['id']}", headers={"X-Request-ID": "rid-ctx"})
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["request_id"] == "rid-ctx" and inside["route"] == API + "/<record_id>"
    assert inside["method"] == "GET" and inside["record_id"] == record["id"]
    assert "request_id" not in outside and outside["message"] == "outside"


def test_json_lines_are_the_ones_python_json_logger_writes(app):
    formatter = JsonFormatter()
    general = OrjsonFormatter.format  # the library's own path, which the direct one mirrors
    extra = {"event": "token_revealed", "record_id": "store_001", "client_key_id": None, "reveal_count": 2}
    plain = logging.LogRecord("sessionsvc.audit", logging.INFO, __file__, 1, "token %s", ("revealed",), None)
    plain.__dict__.update(extra)
    with app.test_request_context(f"{API}/store_001"):
        app.preprocess_request()
        RequestContext().filter(plain)
    assert formatter.format(plain) == general(formatter, plain)
    assert json.loads(formatter.format(plain))["message"] == "token revealed"
    # Records of the same layout (the extra field names are worked out once per layout)
    # keep their own values; another layout gets its own fields.
    again = logging.LogRecord("sessionsvc.audit", logging.INFO, __file__, 1, "token %s", ("revealed",), None)
    again.__dict__.update(plain.__dict__, record_id="store_002", reveal_count=3)
    assert json.loads(formatter.format(again))["record_id"] == "store_002"
    assert formatter.format(again) == general(formatter, again)
    other = logging.LogRecord("sessionsvc", logging.WARNING, __file__, 1, "other", (), None)
    other.redis_error = "timeout"
    assert formatter.format(other) == general(formatter, other)
    assert "record_id" not in json.loads(formatter.format(other))
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("sessionsvc", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert formatter.format(failed) == general(formatter, failed)
    assert "exc_info" in json.loads(formatter.format(failed))


@pytest.fixture
def gunicorn_logger():
    """gunicorn's own logger on its default settings (its handlers removed afterwards)."""
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.glogging import Logger

    names = ("gunicorn.error", "gunicorn.access")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    logger = Logger(GunicornConfig())
    yield logger
    for name in names:
        logging.getLogger(name).handlers[:] = before[name]


def access_requests():
    """(resp, req, environ, request_time) as gunicorn's workers pass them to its logger."""
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": '/api/v1/session-storage/x"y?q=1', "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": '/api/v1/session-storage/x"y', "QUERY_STRING": "q=1", "REMOTE_ADDR": "10.0.0.7",
               "HTTP_USER_AGENT": 'wrk "bench"', "HTTP_HOST": "h", "wsgi.url_scheme": "http",
               "sessionsvc.route": "/api/v1/session-storage/<record_id>", "sessionsvc.request_id": "rid-1"}
    resp = types.SimpleNamespace(status="404 NOT FOUND", sent=91, headers=[
        ("Content-Type", "application/json"), ("X-Request-ID", "rid-1"), ("x-request-id", 'rid-"2"')])
    req = types.SimpleNamespace(headers=[("HOST", "h"), ("X-Forwarded-For", "1.2.3.4"), ("x-forwarded-for", "5.6")])
    elapsed = datetime.timedelta(seconds=1, microseconds=2345)
    yield resp, req, environ, elapsed
    yield types.SimpleNamespace(status=200, sent=None, headers=[]), [("HOST", "h")], {"REQUEST_METHOD": "PUT",
          "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.0"}, datetime.timedelta(microseconds=999)


def gunicorn_settings(monkeypatch, tmp_path) -> dict:
    """What gunicorn.conf.py sets (its metrics directory kept out of this process's environment)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_access_lines_are_the_ones_python_json_logger_writes(gunicorn_logger, monkeypatch, tmp_path):
    """AccessJsonFormatter builds a plain line itself, from the atoms alone: the same line
    as python-json-logger's general path."""
    from gunicorn.glogging import SafeAtoms

    from sessionsvc.logs import AccessJsonFormatter

    settings = gunicorn_settings(monkeypatch, tmp_path)
    formatter = AccessJsonFormatter()
    for resp, req, environ, elapsed in access_requests():
        atoms = SafeAtoms(gunicorn_logger.atoms(resp, req, environ, elapsed))
        record = logging.LogRecord("gunicorn.access", logging.INFO, None, 0, settings["access_log_format"], (atoms,),
                                   None)
        line = formatter.format(record)
        assert line == OrjsonFormatter.format(formatter, record)
        assert json.loads(line)["status"] in (404, 200)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_logs_only_at_a_development_terminal_unless_configured():
    assert human_readable(Config(), Terminal())
    assert not human_readable(Config(), io.StringIO())
    assert not human_readable(Config(env="production", redis_url="redis://x", encryption_keys=TEST_KEYS), Terminal())
    assert human_readable(Config(log_format="text"), io.StringIO())
    assert not human_readable(Config(log_format="json"), Terminal())
    record = logging.LogRecord("sessionsvc", logging.INFO, __file__, 1, "hello", None, None)
    record.request_id = "rid-text"
    assert TextFormatter().format(record).endswith("sessionsvc: hello [request_id=rid-text]")


def test_invented_http_methods_do_not_grow_metric_labels(client):
    for method in ("FOO", "BAR", "X" * 40):
        assert client.open(API, method=method).status_code == 405
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "sessionsvc_http_requests_total", method="OTHER", route="<unmatched>", status="405") >= 3
    assert 'method="FOO"' not in body and 'method="BAR"' not in body
