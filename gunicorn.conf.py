"""gunicorn settings, from the environment. Server settings only: the app reads its own.

`gunicorn -c gunicorn.conf.py wsgi:app`; a `--bind` on the command line wins over
SESSIONSVC_BIND, and WEB_CONCURRENCY sets the number of workers.
"""

import glob
import os
import shutil
import tempfile

# Metrics from every worker meet in one directory per instance (prometheus-client's
# multiprocess mode): set before the app, and so prometheus-client, is imported. Several
# instances on one host each get their own unless the operator names one.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sessionsvc-metrics-")
    os.environ["SESSIONSVC_TEMPORARY_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from sessionsvc.config import Config  # noqa: E402 - after PROMETHEUS_MULTIPROC_DIR is set
from sessionsvc.logs import lean_log_records, logging_config  # noqa: E402
from sessionsvc.workers import worker_class as service_worker_class  # noqa: E402

_app_config = Config.from_env()
_embedded = not any(
    os.environ.get(name) for name in ("SESSIONSVC_REDIS_URL", "REDIS_URL", "SESSIONSVC_REDIS_SENTINELS")
)

bind = [os.environ.get("SESSIONSVC_BIND", "127.0.0.1:8000")]
# The embedded store lives in one process's memory: every request must reach that process.
workers = 1 if _embedded else int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent, 2 workers: of sync, gthread and gevent, the most requests/s for the mixed
# workload on 2 cores (`python -m bench.run --sweep`). SESSIONSVC_WORKER_CLASS=gthread
# (with SESSIONSVC_THREADS per worker) is the no-monkey-patching alternative. gevent,
# gthread and sync name the service's subclasses (sessionsvc/workers.py: gunicorn's own
# refusals answered as JSON); any other value goes to gunicorn unchanged.
threads = int(os.environ.get("SESSIONSVC_THREADS", "4"))
worker_class = service_worker_class(os.environ.get("SESSIONSVC_WORKER_CLASS", "gevent"), threads)
worker_connections = int(os.environ.get("SESSIONSVC_WORKER_CONNECTIONS", "200"))
# Well above the Redis socket timeout: a slow Redis gives 503s, never a killed worker.
timeout = max(int(os.environ.get("SESSIONSVC_WORKER_TIMEOUT", "30")), int(_app_config.redis_timeout_seconds * 5) + 1)
graceful_timeout = int(os.environ.get("SESSIONSVC_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
max_requests = int(os.environ.get("SESSIONSVC_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
forwarded_allow_ips = ",".join(_app_config.forwarded_allow_ips)  # the app trusts the same peers
# Several instances on one host must not collide on a shared control socket or pid file.
control_socket_disable = not os.environ.get("SESSIONSVC_CONTROL_SOCKET")
control_socket = os.environ.get("SESSIONSVC_CONTROL_SOCKET") or None
pidfile = os.environ.get("SESSIONSVC_PIDFILE") or None
# App, error and access lines: JSON (or text at a developer's terminal) on stderr, see
# sessionsvc/logs.py. The access line's message never holds the query string.
logconfig_dict = logging_config(_app_config)
lean_log_records()  # for gunicorn's own lines too (the access line is written per request)
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms route=%({sessionsvc.route}e)s rid=%({x-request-id}o)s'
loglevel = _app_config.log_level.lower()


def on_starting(server):
    size_redis_pool_to_worker_concurrency(server.cfg, os.environ)
    # Files left by an earlier run would resurrect its counters.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for leftover in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(leftover)


def size_redis_pool_to_worker_concurrency(cfg, environ):
    """An async worker (gevent) serves up to `worker_connections` requests at once, and
    under load each of them holds its Redis connection until the event loop gets back to
    it, though Redis answered long before: with a smaller pool a busy worker answers 503
    `pool_exhausted` while Redis is healthy (seen with 256 connections against two
    workers). So unless the operator chose a size, the pool is as large as the worker's
    concurrency; connections are opened only as they are needed. Run before the workers
    start, with the final settings (command line included); they inherit the environment."""
    # By name: "gevent" and the service's "sessionsvc.workers.GeventWorker" alike.
    asynchronous = any(name in cfg.worker_class_str.lower() for name in ("gevent", "eventlet"))
    if "SESSIONSVC_REDIS_MAX_CONNECTIONS" in environ or not asynchronous:
        return
    environ["SESSIONSVC_REDIS_MAX_CONNECTIONS"] = str(max(cfg.worker_connections, _app_config.redis_max_connections))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    temporary = os.environ.get("SESSIONSVC_TEMPORARY_METRICS_DIR")
    if temporary and temporary == os.environ["PROMETHEUS_MULTIPROC_DIR"]:
        shutil.rmtree(temporary, ignore_errors=True)
