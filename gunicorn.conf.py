"""gunicorn settings, from the environment. Server settings only: the app reads its own.

`gunicorn -c gunicorn.conf.py wsgi:app`; a `--bind` on the command line wins over
SESSIONSVC_BIND, and WEB_CONCURRENCY sets the number of workers.
"""

import os

_embedded = not any(
    os.environ.get(name) for name in ("SESSIONSVC_REDIS_URL", "REDIS_URL", "SESSIONSVC_REDIS_SENTINELS")
)

bind = [os.environ.get("SESSIONSVC_BIND", "127.0.0.1:8000")]
# The embedded store lives in one process's memory: every request must reach that process.
workers = 1 if _embedded else int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, 2 workers x 4 threads: the best of sync, gthread and gevent for the mixed workload
# on 2 cores (`python bench/run.py --sweep`, docs/benchmarks.md). gevent matched its
# throughput but its p99 was 5-10x worse (200-480 ms against 40-60 ms): a greenlet
# whose client is quick keeps its worker while the others wait.
worker_class = os.environ.get("SESSIONSVC_WORKER_CLASS", "gthread")
threads = int(os.environ.get("SESSIONSVC_THREADS", "4"))
worker_connections = int(os.environ.get("SESSIONSVC_WORKER_CONNECTIONS", "200"))
# Above the Redis socket timeout (1 s) with room: a slow Redis gives 503s, never a killed worker.
timeout = int(os.environ.get("SESSIONSVC_WORKER_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("SESSIONSVC_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
max_requests = int(os.environ.get("SESSIONSVC_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Several instances on one host must not collide on a shared control socket or pid file.
control_socket_disable = not os.environ.get("SESSIONSVC_CONTROL_SOCKET")
control_socket = os.environ.get("SESSIONSVC_CONTROL_SOCKET") or None
pidfile = os.environ.get("SESSIONSVC_PIDFILE") or None
accesslog = os.environ.get("SESSIONSVC_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("SESSIONSVC_LOG_LEVEL", "info").lower()
