"""The service as a real process: gunicorn on a free loopback port (private
redis-servers come from redis_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from conftest import TEST_KEYS
from redis_server import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Gunicorn:
    """The service as operators run it: `gunicorn -c gunicorn.conf.py wsgi:app`."""

    def __init__(self, log_path: Path, workers: int = 1, **environment: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.environment = {
            "SESSIONSVC_ENCRYPTION_KEYS": ",".join(TEST_KEYS),
            "SESSIONSVC_LOG_FORMAT": "json",
            "WEB_CONCURRENCY": str(workers),
            **environment,
        }
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("SESSIONSVC_", "PROMETHEUS_")) and name not in ("REDIS_URL", "WEB_CONCURRENCY")
        }
        environment.update(self.environment)
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", self.base[7:], "wsgi:app"],
            cwd=ROOT,
            env=environment,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._healthy(), timeout=30, what="gunicorn to answer /healthz")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        """(status, headers, parsed JSON or text) of one request on a new connection."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, response_headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, response_headers, raw = error.code, error.headers, error.read()
        text = raw.decode()
        is_json = response_headers.get("Content-Type", "").startswith("application/json")
        return status, response_headers, json.loads(text) if is_json else text

    def stop(self) -> str:
        """Stop gunicorn and return everything it wrote."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.log_file.close()
        return self.log_path.read_text()
